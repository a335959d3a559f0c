//! What the client reads: entries, their versions and metadata.

use std::fmt;

use std::collections::BTreeMap;

/// One version of an entry.
#[derive(Clone, PartialEq)]
pub struct KvEntry {
    /// Its version number.
    pub version: u64,
    /// Its data (the `data.data` object).
    pub data: serde_json::Value,
}

/// Shows the version and the names of the data's fields, never their values.
impl fmt::Debug for KvEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fields: Vec<&str> = self
            .data
            .as_object()
            .map(|object| object.keys().map(String::as_str).collect())
            .unwrap_or_default();
        f.debug_struct("KvEntry")
            .field("version", &self.version)
            .field("data_fields", &fields)
            .finish()
    }
}

/// An entry's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvMetadata {
    /// The latest version written (0: none).
    pub current_version: u64,
    /// The oldest version kept.

    /// The versions kept, by number.
    pub versions: BTreeMap<u64, KvVersionState>,
}

/// The state of one version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvVersionState {
    /// Soft-deleted (its `deletion_time` is set; it may be in the future
    /// when `delete_version_after` scheduled it).
    pub deleted: bool,
    /// Its data is gone for good.
    pub destroyed: bool,
}
