//! A file's extent map: logical blocks to physical blocks, with an unwritten flag.
//!
//! Every range operation first splits the extents that straddle its ends, so that it
//! then works on whole extents only; neighbours that are contiguous on both sides and
//! carry the same flag are merged back, keeping maps of sequentially written files
//! small.

use redb::{ReadableTable, Table};

use crate::error::MetaResult;
use crate::tables::EXTENT_UNWRITTEN;

/// One mapped run of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Extent {
    /// First logical block of the file.
    pub logical: u64,
    /// First physical block on the LUN.
    pub physical: u64,
    /// Number of blocks.
    pub len: u64,
    /// Allocated but not written: reads as zeros.
    pub unwritten: bool,
}

impl Extent {
    /// One past the last logical block.
    pub fn logical_end(&self) -> u64 {
        self.logical + self.len
    }
    fn value(&self) -> (u64, u64, u8) {
        (
            self.physical,
            self.len,
            if self.unwritten { EXTENT_UNWRITTEN } else { 0 },
        )
    }
    fn from_kv(ino_block: (u64, u64), v: (u64, u64, u8)) -> Extent {
        Extent {
            logical: ino_block.1,
            physical: v.0,
            len: v.1,
            unwritten: v.2 & EXTENT_UNWRITTEN != 0,
        }
    }
}

type ExtentTable<'t> = Table<'t, (u64, u64), (u64, u64, u8)>;

/// The extents of `ino` that overlap logical blocks `[from, to)`, in order.
pub fn extents_in(
    t: &impl ReadableTable<(u64, u64), (u64, u64, u8)>,
    ino: u64,
    from: u64,
    to: u64,
) -> MetaResult<Vec<Extent>> {
    let mut out = Vec::new();
    if from >= to {
        return Ok(out);
    }
    if let Some(entry) = t.range((ino, 0)..=(ino, from))?.next_back() {
        let (k, v) = entry?;
        let e = Extent::from_kv(k.value(), v.value());
        if e.logical_end() > from {
            out.push(e);
        }
    }
    // from < to, so from + 1 cannot overflow.
    for entry in t.range((ino, from + 1)..(ino, to))? {
        let (k, v) = entry?;
        out.push(Extent::from_kv(k.value(), v.value()));
    }
    Ok(out)
}

/// Every extent of `ino`.
pub fn all_extents(
    t: &impl ReadableTable<(u64, u64), (u64, u64, u8)>,
    ino: u64,
) -> MetaResult<Vec<Extent>> {
    extents_in(t, ino, 0, u64::MAX)
}

/// Ensures no extent of `ino` straddles logical block `at`.
pub fn split_at(t: &mut ExtentTable<'_>, ino: u64, at: u64) -> MetaResult<()> {
    let found = match t.range((ino, 0)..(ino, at))?.next_back() {
        Some(entry) => {
            let (k, v) = entry?;
            Some(Extent::from_kv(k.value(), v.value()))
        }
        None => None,
    };
    if let Some(e) = found
        && e.logical < at
        && e.logical_end() > at
    {
        let head = at - e.logical;
        let left = Extent { len: head, ..e };
        let right = Extent {
            logical: at,
            physical: e.physical + head,
            len: e.len - head,
            unwritten: e.unwritten,
        };
        t.insert((ino, left.logical), left.value())?;
        t.insert((ino, right.logical), right.value())?;
    }
    Ok(())
}

/// Removes `[from, to)` from the map; returns the physical runs it held.
pub fn remove_range(
    t: &mut ExtentTable<'_>,
    ino: u64,
    from: u64,
    to: u64,
) -> MetaResult<Vec<Extent>> {
    if from >= to {
        return Ok(Vec::new());
    }
    split_at(t, ino, from)?;
    split_at(t, ino, to)?;
    let inside = extents_in(t, ino, from, to)?;
    for e in &inside {
        t.remove((ino, e.logical))?;
    }
    Ok(inside)
}

/// Inserts a run into a hole of the map, merging with contiguous neighbours.
pub fn insert(t: &mut ExtentTable<'_>, ino: u64, e: Extent) -> MetaResult<()> {
    t.insert((ino, e.logical), e.value())?;
    merge_at(t, ino, e.logical)?;
    merge_at(t, ino, e.logical_end())
}

/// Sets or clears the unwritten flag on every mapped block of `[from, to)`.
pub fn set_unwritten(
    t: &mut ExtentTable<'_>,
    ino: u64,
    from: u64,
    to: u64,
    unwritten: bool,
) -> MetaResult<()> {
    let touched = extents_in(t, ino, from, to)?;
    if touched.iter().all(|e| e.unwritten == unwritten) {
        return Ok(());
    }
    split_at(t, ino, from)?;
    split_at(t, ino, to)?;
    for e in extents_in(t, ino, from, to)? {
        if e.unwritten != unwritten {
            t.insert((ino, e.logical), Extent { unwritten, ..e }.value())?;
        }
    }
    merge_at(t, ino, from)?;
    merge_at(t, ino, to)?;
    Ok(())
}

/// Merges the extent that ends at `at` with the one that starts there, when they are
/// contiguous on the LUN and carry the same flag.
fn merge_at(t: &mut ExtentTable<'_>, ino: u64, at: u64) -> MetaResult<()> {
    if at == 0 {
        return Ok(());
    }
    let right = match t.get((ino, at))? {
        Some(v) => Extent::from_kv((ino, at), v.value()),
        None => return Ok(()),
    };
    let left = match t.range((ino, 0)..(ino, at))?.next_back() {
        Some(entry) => {
            let (k, v) = entry?;
            Extent::from_kv(k.value(), v.value())
        }
        None => return Ok(()),
    };
    if left.logical_end() == at
        && left.physical + left.len == right.physical
        && left.unwritten == right.unwritten
    {
        t.remove((ino, at))?;
        t.insert(
            (ino, left.logical),
            Extent {
                len: left.len + right.len,
                ..left
            }
            .value(),
        )?;
    }
    Ok(())
}

/// A piece of a file's logical range: mapped to the LUN, or a hole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Segment {
    /// No blocks: reads as zeros.
    Hole {
        /// First logical block.
        logical: u64,
        /// Block count.
        len: u64,
    },
    /// Mapped blocks.
    Mapped(Extent),
}

/// Describes `[from, to)` as consecutive segments, holes included.
pub fn segments(extents: &[Extent], from: u64, to: u64) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut at = from;
    for e in extents {
        let s = e.logical.max(from);
        let end = e.logical_end().min(to);
        if s >= end {
            continue;
        }
        if s > at {
            out.push(Segment::Hole {
                logical: at,
                len: s - at,
            });
        }
        let skip = s - e.logical;
        out.push(Segment::Mapped(Extent {
            logical: s,
            physical: e.physical + skip,
            len: end - s,
            unwritten: e.unwritten,
        }));
        at = end;
    }
    if at < to {
        out.push(Segment::Hole {
            logical: at,
            len: to - at,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::EXTENTS;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    use crate::test_support::temp_db as db;

    /// A block-by-block model: logical block → (physical block, unwritten).
    fn model_of(exts: &[Extent]) -> BTreeMap<u64, (u64, bool)> {
        let mut m = BTreeMap::new();
        for e in exts {
            for i in 0..e.len {
                assert!(
                    m.insert(e.logical + i, (e.physical + i, e.unwritten))
                        .is_none(),
                    "overlap"
                );
            }
        }
        m
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64, u64),
        Remove(u64, u64),
        Flag(u64, u64, bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..64, 1u64..8).prop_map(|(a, l)| Op::Insert(a, l)),
            (0u64..64, 1u64..16).prop_map(|(a, l)| Op::Remove(a, l)),
            (0u64..64, 1u64..16, any::<bool>()).prop_map(|(a, l, f)| Op::Flag(a, l, f)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn map_matches_a_block_model(ops in proptest::collection::vec(op(), 1..40)) {
            let (_d, db) = db();
            let txn = db.begin_write().unwrap();
            let mut model: BTreeMap<u64, (u64, bool)> = BTreeMap::new();
            let mut next_phys = 1000u64;
            {
                let mut t = txn.open_table(EXTENTS).unwrap();
                for op in ops {
                    match op {
                        Op::Insert(a, l) => {
                            if (a..a + l).any(|b| model.contains_key(&b)) { continue; }
                            let e = Extent { logical: a, physical: next_phys, len: l, unwritten: true };
                            // Sometimes contiguous with what came before, to exercise merging.
                            next_phys += l + (a % 2);
                            insert(&mut t, 7, e).unwrap();
                            for i in 0..l { model.insert(a + i, (e.physical + i, true)); }
                        }
                        Op::Remove(a, l) => {
                            let gone = remove_range(&mut t, 7, a, a + l).unwrap();
                            let gone_blocks: u64 = gone.iter().map(|e| e.len).sum();
                            let expect = (a..a + l).filter(|b| model.remove(b).is_some()).count() as u64;
                            prop_assert_eq!(gone_blocks, expect);
                        }
                        Op::Flag(a, l, f) => {
                            set_unwritten(&mut t, 7, a, a + l, f).unwrap();
                            for b in a..a + l { if let Some(v) = model.get_mut(&b) { v.1 = f; } }
                        }
                    }
                    let all = all_extents(&t, 7).unwrap();
                    prop_assert_eq!(model_of(&all), model.clone());
                    // Other inodes are untouched and every extent is non-empty.
                    prop_assert!(all.iter().all(|e| e.len > 0));
                    let mid = extents_in(&t, 7, 10, 30).unwrap();
                    let expect: BTreeMap<_, _> = model.range(10..30).map(|(k, v)| (*k, *v)).collect();
                    let got: BTreeMap<_, _> = model_of(&mid).into_iter().filter(|(k, _)| (10..30).contains(k)).collect();
                    prop_assert_eq!(got, expect);
                }
            }
            txn.commit().unwrap();
        }
    }

    #[test]
    fn segments_cover_the_range_with_holes() {
        let exts = [Extent {
            logical: 2,
            physical: 100,
            len: 3,
            unwritten: false,
        }];
        let s = segments(&exts, 0, 8);
        assert_eq!(
            s,
            vec![
                Segment::Hole { logical: 0, len: 2 },
                Segment::Mapped(Extent {
                    logical: 2,
                    physical: 100,
                    len: 3,
                    unwritten: false
                }),
                Segment::Hole { logical: 5, len: 3 },
            ]
        );
        assert_eq!(
            segments(&exts, 3, 4),
            vec![Segment::Mapped(Extent {
                logical: 3,
                physical: 101,
                len: 1,
                unwritten: false
            })]
        );
    }
}
