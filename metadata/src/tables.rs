//! The tables of the metadata store. Keys and values are redb tuples of fixed-width
//! integers and byte strings; inodes are our own encoded records (see [`crate::inode`]).

use redb::TableDefinition;

/// ino → encoded [`crate::Inode`].
pub const INODES: TableDefinition<u64, &[u8]> = TableDefinition::new("inodes");
/// (parent, name) → (ino, kind code, readdir cookie).
pub const DIRENTS: TableDefinition<(u64, &[u8]), (u64, u8, u64)> = TableDefinition::new("dirents");
/// (parent, cookie) → name: readdir order, stable while the directory changes.
pub const DIR_COOKIES: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("dir_cookies");
/// (ino, first logical block) → (first physical block, block count, flags).
pub const EXTENTS: TableDefinition<(u64, u64), (u64, u64, u8)> = TableDefinition::new("extents");
/// (ino, name) → value.
pub const XATTRS: TableDefinition<(u64, &[u8]), &[u8]> = TableDefinition::new("xattrs");
/// ino → symlink target.
pub const SYMLINKS: TableDefinition<u64, &[u8]> = TableDefinition::new("symlinks");
/// Free data extents: first block → block count.
pub const FREE: TableDefinition<u64, u64> = TableDefinition::new("free");
/// The same free extents by size: (block count, first block) → ().
pub const FREE_BY_LEN: TableDefinition<(u64, u64), ()> = TableDefinition::new("free_by_len");
/// Extents freed since the last durable commit: first block → block count. They join
/// FREE only in a durable commit, so a crash can never resurrect a file whose blocks
/// were already given to another.
pub const PENDING_FREE: TableDefinition<u64, u64> = TableDefinition::new("pending_free");
/// Inodes with no links that may still be open: ino → ().
pub const ORPHANS: TableDefinition<u64, ()> = TableDefinition::new("orphans");
/// Space held back for operations that free space (see [`crate::store`]): 0 → bytes.
pub const RESERVE: TableDefinition<u64, &[u8]> = TableDefinition::new("reserve");
/// Answers to other nodes' changes, for their retries: (node, request id) → the
/// encoded answer (the caller's encoding). Written in the transaction of the change.
pub const REQUESTS: TableDefinition<(u8, u64), &[u8]> = TableDefinition::new("requests");
/// Named counters: "next_ino", "free_blocks", "inodes", "generation".
pub const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

/// Extent flag: allocated but never written; reads as zeros.
pub const EXTENT_UNWRITTEN: u8 = 1;

/// Counter names.
pub mod counter {
    /// The next inode number to hand out.
    pub const NEXT_INO: &str = "next_ino";
    /// Blocks in FREE.
    pub const FREE_BLOCKS: &str = "free_blocks";
    /// Inodes in INODES.
    pub const INODES: &str = "inodes";
}
