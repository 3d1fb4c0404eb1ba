//! Free space of the data region: first-fit near a goal, then best fit by size.
//!
//! FREE (by start) and FREE_BY_LEN (by size) always hold the same extents; the
//! `free_blocks` counter is their total. Freed extents wait in PENDING_FREE until a
//! durable commit (see [`crate::tables::PENDING_FREE`]).

use redb::{ReadableTable, Table, WriteTransaction};

use crate::error::{MetaError, MetaResult};
use crate::free_hold::FreeHold;
use crate::tables::{COUNTERS, FREE, FREE_BY_LEN, PENDING_FREE, counter};

/// Reads a counter inside a write transaction.
pub fn get_counter(txn: &WriteTransaction, name: &str) -> MetaResult<u64> {
    let t = txn.open_table(COUNTERS)?;
    Ok(t.get(name)?.map(|v| v.value()).unwrap_or(0))
}

/// Adds `delta` (which may be negative) to a counter.
pub fn add_counter(txn: &WriteTransaction, name: &str, delta: i64) -> MetaResult<u64> {
    let mut t = txn.open_table(COUNTERS)?;
    let cur = t.get(name)?.map(|v| v.value()).unwrap_or(0);
    let new = cur.checked_add_signed(delta).ok_or_else(|| {
        MetaError::Corrupt(format!("counter {name} would go from {cur} by {delta}"))
    })?;
    t.insert(name, new)?;
    Ok(new)
}

struct FreeTables<'t> {
    free: Table<'t, u64, u64>,
    by_len: Table<'t, (u64, u64), ()>,
}

impl FreeTables<'_> {
    fn remove(&mut self, start: u64, len: u64) -> MetaResult<()> {
        self.free.remove(start)?;
        self.by_len.remove((len, start))?;
        Ok(())
    }
    fn add(&mut self, start: u64, len: u64) -> MetaResult<()> {
        if len > 0 {
            self.free.insert(start, len)?;
            self.by_len.insert((len, start), ())?;
        }
        Ok(())
    }
    /// Takes `n` blocks at `at` out of the free extent (start, len).
    fn carve(&mut self, start: u64, len: u64, at: u64, n: u64) -> MetaResult<()> {
        self.remove(start, len)?;
        self.add(start, at - start)?;
        self.add(at + n, start + len - at - n)
    }
}

/// Allocates `want` blocks, preferring ones starting at `goal`; returns the runs in
/// order. Fails with NoSpace, having changed nothing the caller keeps (the caller
/// aborts its transaction).
pub fn allocate(txn: &WriteTransaction, goal: u64, want: u64) -> MetaResult<Vec<(u64, u64)>> {
    let mut got = Vec::new();
    if want == 0 {
        return Ok(got);
    }
    let mut need = want;
    {
        let mut ft = FreeTables {
            free: txn.open_table(FREE)?,
            by_len: txn.open_table(FREE_BY_LEN)?,
        };
        if goal > 0 {
            let hit = match ft.free.range(..=goal)?.next_back() {
                Some(e) => {
                    let (k, v) = e?;
                    Some((k.value(), v.value()))
                }
                None => None,
            };
            if let Some((s, l)) = hit
                && s + l > goal
            {
                let n = need.min(s + l - goal);
                ft.carve(s, l, goal, n)?;
                got.push((goal, n));
                need -= n;
            }
        }
        while need > 0 {
            let fit = match ft.by_len.range((need, 0)..)?.next() {
                Some(e) => Some(e?.0.value()),
                None => None,
            };
            let (l, s) = match fit {
                Some(v) => v,
                None => match ft.by_len.iter()?.next_back() {
                    Some(e) => e?.0.value(),
                    None => return Err(MetaError::NoSpace),
                },
            };
            let n = need.min(l);
            ft.carve(s, l, s, n)?;
            got.push((s, n));
            need -= n;
        }
    }
    add_counter(txn, counter::FREE_BLOCKS, -(want as i64))?;
    Ok(got)
}

/// Returns a run to FREE at once, merging with its neighbours.
pub fn free_now(txn: &WriteTransaction, start: u64, len: u64) -> MetaResult<()> {
    if len == 0 {
        return Ok(());
    }
    {
        let mut ft = FreeTables {
            free: txn.open_table(FREE)?,
            by_len: txn.open_table(FREE_BY_LEN)?,
        };
        let (mut s, mut l) = (start, len);
        let before = match ft.free.range(..start)?.next_back() {
            Some(e) => {
                let (k, v) = e?;
                Some((k.value(), v.value()))
            }
            None => None,
        };
        if let Some((ps, pl)) = before {
            if ps + pl > start {
                return Err(MetaError::Corrupt(format!(
                    "freeing blocks {start}+{len} that are already free"
                )));
            }
            if ps + pl == start {
                ft.remove(ps, pl)?;
                s = ps;
                l += pl;
            }
        }
        let after = match ft.free.range(start..)?.next() {
            Some(e) => {
                let (k, v) = e?;
                Some((k.value(), v.value()))
            }
            None => None,
        };
        if let Some((ns, nl)) = after {
            if ns < start + len {
                return Err(MetaError::Corrupt(format!(
                    "freeing blocks {start}+{len} that are already free"
                )));
            }
            if ns == start + len {
                ft.remove(ns, nl)?;
                l += nl;
            }
        }
        ft.add(s, l)?;
    }
    add_counter(txn, counter::FREE_BLOCKS, len as i64)?;
    Ok(())
}

/// Queues a run to be freed at the next durable commit.
pub fn free_later(txn: &WriteTransaction, start: u64, len: u64) -> MetaResult<()> {
    if len > 0 {
        txn.open_table(PENDING_FREE)?.insert(start, len)?;
    }
    Ok(())
}

/// Moves the pending runs into FREE, except those `hold` keeps back (a shared volume:
/// layouts handed out may still cover them); called inside a durable commit.
pub fn release_pending(txn: &WriteTransaction, hold: Option<&FreeHold>) -> MetaResult<u64> {
    let pending: Vec<(u64, u64)> = {
        let mut t = txn.open_table(PENDING_FREE)?;
        let mut v = Vec::new();
        for e in t.iter()? {
            let (k, l) = e?;
            let (start, len) = (k.value(), l.value());
            if hold.is_none_or(|h| h.may_release(start)) {
                v.push((start, len));
            }
        }
        for (start, _) in &v {
            t.remove(start)?;
        }
        v
    };
    let mut total = 0;
    for (s, l) in pending {
        free_now(txn, s, l)?;
        total += l;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_support::temp_db as db;

    #[test]
    fn allocates_near_the_goal_then_by_size_and_merges_frees() {
        let (_d, db) = db();
        let txn = db.begin_write().unwrap();
        free_now(&txn, 100, 50).unwrap();
        free_now(&txn, 300, 10).unwrap();
        assert_eq!(get_counter(&txn, counter::FREE_BLOCKS).unwrap(), 60);
        assert_eq!(allocate(&txn, 120, 5).unwrap(), vec![(120, 5)]);
        assert_eq!(allocate(&txn, 0, 8).unwrap(), vec![(300, 8)]);
        assert_eq!(allocate(&txn, 0, 44).unwrap(), vec![(125, 25), (100, 19)]);
        free_now(&txn, 120, 5).unwrap();
        free_now(&txn, 125, 25).unwrap();
        free_now(&txn, 100, 19).unwrap();
        let t = txn.open_table(FREE).unwrap();
        let runs: Vec<_> = t
            .iter()
            .unwrap()
            .map(|e| {
                let (k, v) = e.unwrap();
                (k.value(), v.value())
            })
            .collect();
        assert_eq!(runs, vec![(100, 50), (308, 2)]);
        drop(t);
        assert!(free_now(&txn, 110, 1).is_err(), "double free is caught");
    }

    #[test]
    fn pending_frees_join_free_space_only_on_release() {
        let (_d, db) = db();
        let txn = db.begin_write().unwrap();
        free_now(&txn, 0, 10).unwrap();
        let got = allocate(&txn, 0, 10).unwrap();
        free_later(&txn, got[0].0, got[0].1).unwrap();
        assert!(allocate(&txn, 0, 1).is_err());
        assert_eq!(release_pending(&txn, None).unwrap(), 10);
        assert_eq!(allocate(&txn, 0, 10).unwrap(), vec![(0, 10)]);
    }
}
