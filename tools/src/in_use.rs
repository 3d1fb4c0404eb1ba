//! mkfs and fsck refuse a volume that cluster nodes are using: one whose disk
//! heartbeat slots still advance.

use anyhow::{Result, bail};
use blockdev::BlockDevice;
use lockmgr::cluster_region::ClusterRegion;
use metadata::Superblock;

/// Fails when `dev` holds a csvfs volume whose heartbeat slots advance.
pub fn refuse_if_in_use(dev: &dyn BlockDevice) -> Result<()> {
    let Ok((sb, _)) = Superblock::read(dev) else {
        return Ok(());
    };
    let region = ClusterRegion::new(dev, sb.cluster.byte_offset());
    let live = region.advancing_slots()?;
    if !live.is_empty() {
        let ids: Vec<String> = live.iter().map(|n| n.to_string()).collect();
        bail!(
            "{}: volume {:?} is in use: the disk heartbeats of node id(s) {} advance; stop `csvfs node` on those nodes first",
            dev.name(),
            sb.label,
            ids.join(", ")
        );
    }
    Ok(())
}
