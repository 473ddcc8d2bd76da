//! Language handlers: how code in a language reaches its toolchain inside a
//! container, how to tell that the toolchain works, and how libraries are
//! installed for it.

mod bash;
mod c;
mod cpp;
mod go;
mod java;
mod javascript;
mod python;
mod r;
mod ruby;
mod rust;
mod typescript;

use bytes::Bytes;

/// How to run a piece of code: the process to start, bytes to feed its
/// standard input before the caller's own input, and extra environment.
#[derive(Debug, Clone)]
pub struct CodePlan {
    pub argv: Vec<String>,
    /// Delivered ahead of the run's stdin (empty when the code travels as an
    /// argument); the toolchain's bootstrap reads exactly this many bytes.
    /// Stdin keeps any code binary-safe and free of argv's size limit.
    pub stdin_prefix: Bytes,
    pub env: Vec<(String, String)>,
}

/// A pre-started interpreter that the resident runner keeps ready for the
/// next run (see `sandbox::runner`): started as `command`, `code`, then
/// `command` again (so that it knows which runs it can take over), with
/// `env` on top of the pool's. It takes a run whose argv begins with
/// `command` and execs any other.
#[derive(Debug, Clone)]
pub struct Zygote {
    pub command: Vec<String>,
    pub code: &'static str,
    /// What `plan` puts in every run's environment: the interpreter reads
    /// some of it at start-up, so it must start with it.
    pub env: Vec<(String, String)>,
}

/// Where libraries go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallScope {
    /// Into `POOL_LIBRARY_DIR`, at warm-up, by a user other than the sandbox
    /// user: they survive resets and code cannot change them.
    Pool,
    /// Into the sandbox user's home, for one lease: the reset removes them.
    Lease,
}

/// Pool-wide libraries live under this directory (a tmpfs that the reset
/// leaves alone, writable only while the container warms up).
pub const POOL_LIBRARY_DIR: &str = "/opt/sandpool/lib";

/// A language the server can run code in.
pub trait Language: Send + Sync + 'static {
    /// Name used in pool specs and runs ("python").
    fn name(&self) -> &'static str;
    /// Image used when a pool names none.
    fn default_image(&self) -> &'static str;
    /// A command that proves the toolchain runs, and text its stdout must
    /// contain. Used when a container warms up and in health checks.
    fn check(&self) -> (Vec<String>, &'static str);
    /// How to run `code`; `has_stdin` says whether the run feeds input.
    fn plan(&self, code: &[u8], has_stdin: bool) -> CodePlan;
    /// A shell script run once as the sandbox user when a container warms up,
    /// after the check, to do slow first-time work (caches) so that the first
    /// run of a lease is as fast as the next. Keep its results outside the
    /// places a reset wipes (/sandbox, /tmp, the home), or redo them in
    /// `after_reset`.
    fn warm_up(&self) -> Option<&'static str> {
        None
    }
    /// A shell snippet appended to every reset (as the sandbox user), to
    /// restore per-container state the wipe removed (a font cache...).
    fn after_reset(&self) -> Option<&'static str> {
        None
    }
    /// The program of `plan` reports the artifacts it produced itself (see
    /// `run::artifacts`); otherwise the run layer wraps it in a shell that does.
    fn reports_artifacts(&self) -> bool {
        false
    }
    /// Files the server places in every container at warm-up (path under
    /// /opt/sandpool, content): helper modules such as a plotting backend.
    /// They are written by a user other than the sandbox user, so code can
    /// read but not change them, and the reset leaves them alone.
    fn support_files(&self) -> &'static [(&'static str, &'static str)] {
        &[]
    }
    /// How to start a persistent context's kernel (see `run::context`): a
    /// process that reads cells from stdin and runs them in one namespace.
    /// `None`: the language has no contexts.
    fn context_kernel(&self) -> Option<Vec<String>> {
        None
    }
    /// A pre-started interpreter for the resident runner; `None`: runs on
    /// the runner start their program cold.
    fn zygote(&self) -> Option<Zygote> {
        None
    }
    /// Environment every run and context of the language gets: where
    /// installed libraries are, plotting hooks.
    fn library_env(&self) -> Vec<(String, String)> {
        Vec::new()
    }
    /// A command that prints, one per line, those of `packages` that are not
    /// already installed at a satisfying version (the image may have them:
    /// installing them again would need an index for nothing). `None`: the
    /// language cannot tell, and every package goes to the installer.
    fn missing_libraries_command(&self, _packages: &[String]) -> Option<Vec<String>> {
        None
    }
    /// The installer's argv for `packages` (names, requirements or paths of
    /// package files in the container), or `None` if the language has no
    /// installer. `index_url` points the installer at a package index.
    fn install_command(
        &self,
        _packages: &[String],
        _scope: InstallScope,
        _index_url: Option<&str>,
    ) -> Option<Vec<String>> {
        None
    }
}

static LANGUAGES: &[&dyn Language] = &[
    &python::Python,
    &javascript::JavaScript,
    &typescript::TypeScript,
    &go::Go,
    &java::Java,
    &cpp::Cpp,
    &c::C,
    &rust::Rust,
    &ruby::Ruby,
    &r::R,
    &bash::Bash,
];

/// The handler for `name`, if the server knows the language.
pub fn lookup(name: &str) -> Option<&'static dyn Language> {
    LANGUAGES.iter().copied().find(|l| l.name() == name)
}

/// Names of every known language.
pub fn names() -> Vec<&'static str> {
    LANGUAGES.iter().map(|l| l.name()).collect()
}

/// Code that may travel as a process argument: UTF-8 without NUL bytes, well
/// under the kernel's 128 KiB limit on one argument, in a run without stdin.
/// Attaching stdin costs the engine a few milliseconds per exec, so this is
/// the fast path for the common case.
pub fn as_argument(code: &[u8], has_stdin: bool) -> Option<&str> {
    const MAX_ARGUMENT: usize = 96 * 1024;
    if has_stdin || code.len() > MAX_ARGUMENT || code.contains(&0) {
        return None;
    }
    std::str::from_utf8(code).ok()
}

/// Writes the code to a fresh directory under /tmp, then evaluates `script`
/// with `$SRC` (the source file) and `$DIR` (its directory) set, in the run's
/// working directory, and removes the directory. The script's exit status is
/// the run's: a compile error is the compiler's non-zero exit.
const SOURCE_FILE_BOOTSTRAP: &str = r#"d=$(mktemp -d /tmp/.sandpool-run.XXXXXX) || exit 125
SRC="$d/$3"; DIR="$d"; export SRC DIR
if [ "$1" = a ]; then printf '%s' "$2" > "$SRC"; else head -c "$2" > "$SRC"; fi
eval "$4"; rc=$?
rm -rf "$d"
exit $rc"#;

/// A plan for toolchains that take a source file named `file_name` (code as
/// an argument when possible, else on stdin; see `as_argument`), run by the
/// shell `script`, e.g. `g++ -o "$DIR/main" "$SRC" && "$DIR/main"`.
pub fn source_file_plan(code: &[u8], has_stdin: bool, file_name: &str, script: &str) -> CodePlan {
    let (mode, arg, prefix) = match as_argument(code, has_stdin) {
        Some(text) => ("a", text.to_string(), Bytes::new()),
        None => ("s", code.len().to_string(), Bytes::copy_from_slice(code)),
    };
    CodePlan {
        argv: vec![
            "/bin/sh".into(),
            "-c".into(),
            SOURCE_FILE_BOOTSTRAP.into(),
            "sh".into(),
            mode.into(),
            arg,
            file_name.into(),
            script.into(),
        ],
        stdin_prefix: prefix,
        env: Vec::new(),
    }
}
