//! Language handlers: how code in a language reaches its toolchain inside a
//! container, and how to tell that the toolchain works.

mod python;

use bytes::Bytes;

/// How to run a piece of code: the process to start, bytes to feed its
/// standard input before the caller's own input, and extra environment.
#[derive(Debug, Clone)]
pub struct CodePlan {
    pub argv: Vec<String>,
    /// Delivered ahead of the run's stdin; the toolchain's bootstrap reads
    /// exactly this many bytes. Passing code through stdin keeps it
    /// binary-safe and free of argv's size limit and of any shell.
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
    /// How to run `code`.
    fn plan(&self, code: &[u8]) -> CodePlan;
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
