//! R, with `Rscript`. Rscript runs a program from a file (`-e` is meant for
//! one-liners), so the code goes through `source_file_plan` as `main.R`. R resolves
//! relative paths against the working directory, where the script runs,
//! not against the script's location, so the file living under /tmp changes
//! nothing for the program. Parse and runtime errors both end with
//! "Execution halted" on stderr and exit status 1.

use super::{CodePlan, Language, source_file_plan};

pub struct R;

impl Language for R {
    fn name(&self) -> &'static str {
        "r"
    }

    fn default_image(&self) -> &'static str {
        "sandpool/r:bookworm"
    }

    fn check(&self) -> (Vec<String>, &'static str) {
        (
            vec![
                "Rscript".into(),
                "-e".into(),
                "cat('sandpool-', 'ok\\n', sep = '')".into(),
            ],
            "sandpool-ok",
        )
    }

    fn plan(&self, code: &[u8], has_stdin: bool) -> CodePlan {
        source_file_plan(code, has_stdin, "main.R", r#"Rscript "$SRC""#)
    }

    /// A profile that sends graphics (base and ggplot2) to files in the
    /// run's plot directory.
    fn support_files(&self) -> &'static [(&'static str, &'static str)] {
        &[(PROFILE, include_str!("support/Rprofile"))]
    }

    fn library_env(&self) -> Vec<(String, String)> {
        vec![("R_PROFILE_USER".into(), PROFILE.into())]
    }
}

/// Where the profile goes (a tmpfs the reset leaves alone).
const PROFILE: &str = "/opt/sandpool/r/Rprofile";
