//! Java, with the JDK's single-file source launcher (`java Main.java`,
//! JEP 330): it compiles the file in memory and runs its first top-level
//! class, whatever that class is called (the file-name rule does not apply
//! in this mode). One JVM start instead of two for `javac` then `java`, and
//! no class files. The code goes through `source_file_plan` (the launcher
//! reads only files); compile errors come back as javac's, on stderr, with
//! exit status 1; an uncaught exception exits 1 with its stack trace.
//!
//! Start-up: the image's default CDS archive was regenerated with the
//! classes the launcher and javac load. Flags, all without any change in
//! what a program does or prints:
//! - `-XX:+UseSerialGC`: what the JVM picks by itself with one CPU (the
//!   default pool limit); fixed so that a pool granting more CPUs does not
//!   start G1's threads for a few hundred milliseconds of work.
//! - `-XX:-UsePerfData`: no hsperfdata file in /tmp (only `jps`/`jstat` read
//!   it).
//!
//! Not used: `-XX:TieredStopAtLevel=1` (C1 only). It saves about 30% of a
//! hello world but makes hot loops 1.4-3x slower, measured here, which a user
//! timing an algorithm would see as a different machine.
//!
//! JDK 17's launcher runs the *first* top-level class: code that declares a
//! helper class before the one with `main` fails with "can't find
//! main(String[]) method in class: Helper" (put `main`'s class first).

use super::{CodePlan, Language, source_file_plan};

pub struct Java;

const RUN: &str = r#"java -XX:+UseSerialGC -XX:-UsePerfData "$SRC""#;

/// Compiles and runs a class through the launcher, so that a JDK without
/// its compiler (a JRE) fails the warm-up rather than the first run.
const WARM_UP: &str = r#"d=$(mktemp -d) || exit 1
printf 'public class Hello {\n  public static void main(String[] args) {\n    System.out.println("sandpool-" + "ok");\n  }\n}\n' >"$d/Main.java"
out=$(java -XX:+UseSerialGC -XX:-UsePerfData "$d/Main.java"); rc=$?
rm -rf "$d"
[ $rc = 0 ] || exit $rc
[ "$out" = sandpool-ok ] || { echo "hello world printed '$out'" >&2; exit 1; }"#;

impl Language for Java {
    fn name(&self) -> &'static str {
        "java"
    }

    fn default_image(&self) -> &'static str {
        "sandpool/java:bookworm"
    }

    /// Cheap, for health checks (on stdout with `--version`, unlike
    /// `-version`); the warm-up proves that compiling works.
    fn check(&self) -> (Vec<String>, &'static str) {
        (
            vec!["java".into(), "--version".into()],
            "Runtime Environment",
        )
    }

    fn plan(&self, code: &[u8], has_stdin: bool) -> CodePlan {
        source_file_plan(code, has_stdin, "Main.java", RUN)
    }

    fn warm_up(&self) -> Option<&'static str> {
        Some(WARM_UP)
    }
}
