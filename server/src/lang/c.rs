//! C, with gcc (image `sandpool/cpp`, shared with C++). The code goes
//! through `source_file_plan` as `main.c`; it is compiled inside its
//! directory, so diagnostics read `main.c:3:5: error: ...`, with the run's
//! working directory added to the `#include "..."` path (`-iquote`) so that
//! uploaded headers are found. The binary then runs in the working
//! directory. A compile error is gcc's non-zero exit with its diagnostics on
//! stderr; the program never runs.
//!
//! Flags: GNU C17 (gcc 12's default, named so that it stays put), `-O2` as
//! judges and most build systems use (on small programs it costs nothing
//! measurable over -O0), `-lm` since code using <math.h> expects it,
//! `-pipe` (no temporary files between the passes).

use super::{CodePlan, Language, source_file_plan};

pub struct C;

const BUILD_AND_RUN: &str = r#"(w=$PWD; cd "$DIR" && exec gcc -std=gnu17 -O2 -pipe -iquote "$w" -o main main.c -lm) && "$DIR/main""#;

/// Compiles and links a program against libc and libm: proves the whole
/// toolchain (compiler, assembler, linker, headers) before the first lease.
const WARM_UP: &str = r#"d=$(mktemp -d) || exit 1
cd "$d" || exit 1
printf '#include <math.h>\n#include <stdio.h>\nint main(void) { printf("sandpool-%%s\\n", sqrt(4.0) == 2.0 ? "ok" : "bad"); return 0; }\n' >main.c
gcc -std=gnu17 -O2 -pipe -o main main.c -lm && out=$(./main); rc=$?
cd / && rm -rf "$d"
[ $rc = 0 ] || exit $rc
[ "$out" = sandpool-ok ] || { echo "hello world printed '$out'" >&2; exit 1; }"#;

impl Language for C {
    fn name(&self) -> &'static str {
        "c"
    }

    fn default_image(&self) -> &'static str {
        super::cpp::CPP_IMAGE
    }

    /// Cheap, for health checks; the warm-up proves that compiling works.
    fn check(&self) -> (Vec<String>, &'static str) {
        (vec!["gcc".into(), "--version".into()], "gcc")
    }

    fn plan(&self, code: &[u8], has_stdin: bool) -> CodePlan {
        source_file_plan(code, has_stdin, "main.c", BUILD_AND_RUN)
    }

    fn warm_up(&self) -> Option<&'static str> {
        Some(WARM_UP)
    }
}
