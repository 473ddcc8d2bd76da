//! Language handlers: how code in a language reaches its toolchain inside a
//! container, and how to tell that the toolchain works.

mod python;

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

static LANGUAGES: &[&dyn Language] = &[&python::Python];

/// The handler for `name`, if the server knows the language.
pub fn lookup(name: &str) -> Option<&'static dyn Language> {
    LANGUAGES.iter().copied().find(|l| l.name() == name)
}

/// Names of every known language.
pub fn names() -> Vec<&'static str> {
    LANGUAGES.iter().map(|l| l.name()).collect()
}
