//! Answers to other nodes' changes, kept for their retries. A node whose coordinator
//! died does not know whether its last change was applied: it sends it again, with the
//! same request id, to the next coordinator. The answer of every applied change is
//! recorded in the transaction of the change, so a retry is answered from the record
//! instead of being applied twice (a create answering EEXIST, say).
//!
//! Request ids grow over a node's life and start at a clock reading shifted left
//! (see the caller), so a node's ids only grow; each record drops that node's records
//! more than [`WINDOW`] ids older.

use redb::ReadableTable;

use crate::error::MetaResult;
use crate::namespace::Ctx;
use crate::tables::REQUESTS;

/// How many ids back a node's answers are kept.
pub const WINDOW: u64 = 1 << 20;

/// Most old records one change drops (the rest go with later changes).
const TRIM_BATCH: usize = 64;

impl Ctx<'_> {
    /// The recorded answer to request `id` of `node`, if that change was applied.
    pub fn answered(&self, node: u8, id: u64) -> MetaResult<Option<Vec<u8>>> {
        let t = self.txn.open_table(REQUESTS)?;
        Ok(t.get((node, id))?.map(|v| v.value().to_vec()))
    }

    /// Records the answer to request `id` of `node`, and drops old ones of that node.
    pub fn record_answer(&self, node: u8, id: u64, answer: &[u8]) -> MetaResult<()> {
        let mut t = self.txn.open_table(REQUESTS)?;
        let old: Vec<u64> = t
            .range((node, 0)..(node, id.saturating_sub(WINDOW)))?
            .take(TRIM_BATCH)
            .map(|e| e.map(|(k, _)| k.value().1))
            .collect::<Result<_, _>>()?;
        for o in old {
            t.remove((node, o))?;
        }
        t.insert((node, id), answer)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::JobKind;

    #[test]
    fn answers_are_found_again_and_old_ones_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let vol = crate::volume::scratch_volume(dir.path());
        let base = 1u64 << 40;
        vol.write(JobKind::default(), move |c| {
            c.record_answer(2, base, b"first")?;
            c.record_answer(3, base, b"other node")
        })
        .unwrap();
        let got = vol
            .write(JobKind::default(), move |c| c.answered(2, base))
            .unwrap();
        assert_eq!(got.as_deref(), Some(&b"first"[..]));
        // A much later id of node 2 drops node 2's old answer, not node 3's.
        vol.write(JobKind::default(), move |c| {
            c.record_answer(2, base + super::WINDOW + 5, b"later")
        })
        .unwrap();
        let (a, b, c3) = vol
            .write(JobKind::default(), move |c| {
                Ok((
                    c.answered(2, base)?,
                    c.answered(2, base + super::WINDOW + 5)?,
                    c.answered(3, base)?,
                ))
            })
            .unwrap();
        assert_eq!(a, None);
        assert_eq!(b.as_deref(), Some(&b"later"[..]));
        assert_eq!(c3.as_deref(), Some(&b"other node"[..]));
    }
}
