//! What a run leaves behind: the files it wrote under the pool's output
//! directory, as every layer sees them (the lease records them, runs stream
//! them, files lists them, the api shows them).

mod mime;

use std::time::SystemTime;

pub use mime::mime_type;

/// A file in the output directory.
#[derive(Debug, Clone, PartialEq)]
pub struct ArtifactInfo {
    pub name: String,
    pub path: String,
    pub mime_type: String,
    pub size: u64,
    pub sha256: String,
    pub run_id: String,
    pub modified: SystemTime,
    pub plot: bool,
}

impl ArtifactInfo {
    /// A file `name` (relative to `out_dir`); files under plots/ are figures.
    pub fn new(
        out_dir: &str,
        name: String,
        size: u64,
        modified: SystemTime,
        run_id: String,
    ) -> Self {
        Self {
            path: format!("{}/{}", out_dir.trim_end_matches('/'), name),
            mime_type: mime_type(&name).to_string(),
            plot: name.starts_with("plots/"),
            name,
            size,
            sha256: String::new(),
            run_id,
            modified,
        }
    }
}
