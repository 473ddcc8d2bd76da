//! Rust, with rustc from Debian's `rustc-web` package (1.85 in bookworm,
//! newer through bookworm-security): the plain `rustc` package is 1.63,
//! which rejects much of the code written today (let-else, newer std APIs).
//! No cargo and no crates: a program uses std only, as on the Playground.
//!
//! The code goes through `source_file_plan` as `main.rs`, compiled inside
//! its directory so that errors and panics read `main.rs:3:5`; the binary
//! then runs in the working directory. A compile error is rustc's exit 1
//! with its diagnostics on stderr; a panic exits 101.
//!
//! Flags: edition 2021 (what most code in the wild is written for; 2024
//! turns some accepted patterns, such as references to `static mut`, into
//! errors). `-C opt-level=1 -C debug-assertions=on`: the Playground's debug
//! semantics (integer overflow and `debug_assert!` panic) with code about 5x
//! faster than opt-level 0 on loops, for about 15 ms more compile time on a
//! hello world. `-A warnings`: lints such as unused variables do not fill
//! the program's stderr; lints that deny still fail the build.

use super::{CodePlan, Language, source_file_plan};

pub struct Rust;

const BUILD_AND_RUN: &str = r#"(cd "$DIR" && exec rustc --edition 2021 -C opt-level=1 -C debug-assertions=on -A warnings -o main main.rs) && "$DIR/main""#;

/// Compiles and links a program: proves rustc, its std and the system
/// linker before the first lease.
const WARM_UP: &str = r#"d=$(mktemp -d) || exit 1
cd "$d" || exit 1
printf 'fn main() {\n    let v: Vec<&str> = vec!["sandpool-", "ok"];\n    println!("{}", v.concat());\n}\n' >main.rs
rustc --edition 2021 -C opt-level=1 -C debug-assertions=on -A warnings -o main main.rs && out=$(./main); rc=$?
cd / && rm -rf "$d"
[ $rc = 0 ] || exit $rc
[ "$out" = sandpool-ok ] || { echo "hello world printed '$out'" >&2; exit 1; }"#;

impl Language for Rust {
    fn name(&self) -> &'static str {
        "rust"
    }

    fn default_image(&self) -> &'static str {
        "sandpool/rust:bookworm"
    }

    /// Cheap, for health checks; the warm-up proves that compiling works.
    fn check(&self) -> (Vec<String>, &'static str) {
        (vec!["rustc".into(), "--version".into()], "rustc ")
    }

    fn plan(&self, code: &[u8], has_stdin: bool) -> CodePlan {
        source_file_plan(code, has_stdin, "main.rs", BUILD_AND_RUN)
    }

    fn warm_up(&self) -> Option<&'static str> {
        Some(WARM_UP)
    }
}
