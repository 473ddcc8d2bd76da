//! Go. The go tool reads programs only from files, so code goes through
//! `source_file_plan`: written as `main.go` in a fresh directory under /tmp,
//! built there, and the binary run in the run's working directory.
//!
//! `go build` + run rather than `go run`: `go run` turns any non-zero exit
//! into status 1 plus an "exit status N" line on stderr; a binary of our own
//! keeps the program's status and signals. The build runs inside the source
//! directory so that compile errors read `./main.go:3:2: ...`, and the
//! compiler trims that directory from the paths it records, so that panics
//! read `main.go:3` (`-gcflags` without a pattern applies to the user's
//! package only: the prebuilt standard library still matches).
//! `-ldflags=-s -w` skips the symbol table and DWARF: linking is most of a
//! small build and this cuts it by about a third; panics still print file
//! and line (those come from the runtime's own tables).
//!
//! The image sets CGO_ENABLED=0 (no C compiler in it) and points GOCACHE at
//! a read-only cache of the standard library built for exactly that, so a
//! build compiles only the user's package. A read-only cache cannot hold the
//! user's package, so no run is faster for having run before: the first run
//! of a lease costs what every other run costs.

use super::{CodePlan, Language, source_file_plan};

pub struct Go;

/// Keep in step with `WARM_UP`.
const BUILD_AND_RUN: &str = r#"(cd "$DIR" && exec go build -gcflags=-trimpath="$DIR" -ldflags="-s -w" -o main main.go) && "$DIR/main""#;

/// Builds and runs a program that uses the standard library, so that a
/// broken toolchain or cache fails the container's warm-up, not a user's
/// run, and the cache's files are in the page cache before the first lease.
const WARM_UP: &str = r#"d=$(mktemp -d) || exit 1
cd "$d" || exit 1
printf 'package main\n\nimport (\n\t"fmt"\n\t"os"\n)\n\nfunc main() { fmt.Fprintln(os.Stdout, "sandpool-ok") }\n' >main.go
go build -ldflags="-s -w" -o main main.go && out=$(./main); rc=$?
cd / && rm -rf "$d"
[ $rc = 0 ] || exit $rc
[ "$out" = sandpool-ok ] || { echo "hello world printed '$out'" >&2; exit 1; }"#;

impl Language for Go {
    fn name(&self) -> &'static str {
        "go"
    }

    fn default_image(&self) -> &'static str {
        "sandpool/go:bookworm"
    }

    /// Cheap, for health checks; the warm-up proves that builds work.
    fn check(&self) -> (Vec<String>, &'static str) {
        (vec!["go".into(), "version".into()], "go version")
    }

    fn plan(&self, code: &[u8], has_stdin: bool) -> CodePlan {
        source_file_plan(code, has_stdin, "main.go", BUILD_AND_RUN)
    }

    fn warm_up(&self) -> Option<&'static str> {
        Some(WARM_UP)
    }
}
