//! Naming a LUN: a path in the host's file system today; `iscsi://` URLs join it when the
//! built-in initiator lands.

use std::path::PathBuf;
use std::sync::Arc;

use crate::{BlockDevice, BlockError, FileDevice};

/// Where a LUN is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LunUrl {
    /// An image file or a block device.
    Path(PathBuf),
}

impl LunUrl {
    /// Parses what a user typed as a LUN.
    pub fn parse(s: &str) -> Result<LunUrl, BlockError> {
        if s.is_empty() {
            return Err(BlockError::BadLun(s.into(), "empty LUN name".into()));
        }
        if let Some((scheme, _)) = s.split_once("://") {
            return Err(BlockError::BadLun(
                s.into(),
                format!(
                    "the {scheme}:// scheme is not supported yet; give an image file or a block device"
                ),
            ));
        }
        Ok(LunUrl::Path(PathBuf::from(s)))
    }
}

/// Opens the LUN named by `s`.
pub fn open_lun(s: &str, read_only: bool) -> Result<Arc<dyn BlockDevice>, BlockError> {
    match LunUrl::parse(s)? {
        LunUrl::Path(p) => Ok(Arc::new(FileDevice::open(&p, read_only)?)),
    }
}
