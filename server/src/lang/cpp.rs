//! C++17, with g++. The code goes through `source_file_plan` as `main.cpp`;
//! it is compiled inside its directory, so diagnostics read
//! `main.cpp:3:5: error: ...`, with the run's working directory added to the
//! `#include "..."` path (`-iquote`) so that uploaded headers are found. The
//! binary then runs in the working directory. A compile error is g++'s
//! non-zero exit with its diagnostics on stderr.
//!
//! Flags: `-std=c++17 -O2 -pipe`. The image holds a precompiled
//! `<bits/stdc++.h>` (common in generated and contest-style code) built with
//! exactly these flags: such a program compiles in about 0.3 s instead of
//! 0.9 s. gcc uses the precompiled header only if the flags match, so change
//! them together with `deploy/images/setup.sh`.

use super::{CodePlan, Language, source_file_plan};

pub struct Cpp;

/// The image with gcc and g++ (C uses it too).
pub(super) const CPP_IMAGE: &str = "sandpool/cpp:bookworm";

const BUILD_AND_RUN: &str = r#"(w=$PWD; cd "$DIR" && exec g++ -std=c++17 -O2 -pipe -iquote "$w" -o main main.cpp) && "$DIR/main""#;

/// Compiles a program with the standard library's umbrella header: proves
/// the toolchain and brings the precompiled header (100 MB) into the page
/// cache, so that the first lease does not wait for the disk.
const WARM_UP: &str = r#"d=$(mktemp -d) || exit 1
cd "$d" || exit 1
printf '#include <bits/stdc++.h>\nint main() { std::vector<std::string> v{"sandpool-", "ok"}; std::cout << v[0] + v[1] << std::endl; }\n' >main.cpp
g++ -std=c++17 -O2 -pipe -o main main.cpp && out=$(./main); rc=$?
cd / && rm -rf "$d"
[ $rc = 0 ] || exit $rc
[ "$out" = sandpool-ok ] || { echo "hello world printed '$out'" >&2; exit 1; }"#;

impl Language for Cpp {
    fn name(&self) -> &'static str {
        "cpp"
    }

    fn default_image(&self) -> &'static str {
        CPP_IMAGE
    }

    /// Cheap, for health checks; the warm-up proves that compiling works.
    fn check(&self) -> (Vec<String>, &'static str) {
        (vec!["g++".into(), "--version".into()], "g++")
    }

    fn plan(&self, code: &[u8], has_stdin: bool) -> CodePlan {
        source_file_plan(code, has_stdin, "main.cpp", BUILD_AND_RUN)
    }

    fn warm_up(&self) -> Option<&'static str> {
        Some(WARM_UP)
    }
}
