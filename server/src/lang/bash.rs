//! Bash. The code is bash's own input, so there is no bootstrap: it runs as
//! `bash -c CODE main.sh`, which makes `$0` "main.sh" and errors read
//! `main.sh: line 3: ...`. It travels as an argument even when the run has
//! stdin (the run's input then goes to the script untouched). Code that
//! cannot be an argument (NUL bytes, not UTF-8, above the size limit) is
//! written to a file by `source_file_plan` and run as `bash FILE`.

use super::{CodePlan, Language, source_file_plan};

pub struct Bash;

impl Language for Bash {
    fn name(&self) -> &'static str {
        "bash"
    }

    fn default_image(&self) -> &'static str {
        "sandpool/bash:bookworm"
    }

    fn check(&self) -> (Vec<String>, &'static str) {
        (self.plan(b"echo sandpool-ok", false).argv, "sandpool-ok")
    }

    fn plan(&self, code: &[u8], has_stdin: bool) -> CodePlan {
        match super::as_argument(code, false) {
            Some(text) => CodePlan {
                argv: vec!["bash".into(), "-c".into(), text.into(), "main.sh".into()],
                stdin_prefix: bytes::Bytes::new(),
                env: Vec::new(),
            },
            None => source_file_plan(code, has_stdin, "main.sh", r#"bash "$SRC""#),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_is_an_argument_even_with_stdin() {
        let plan = Bash.plan(b"read x; echo $x", true);
        assert_eq!(plan.argv, ["bash", "-c", "read x; echo $x", "main.sh"]);
        assert!(plan.stdin_prefix.is_empty());
    }

    #[test]
    fn code_that_cannot_be_an_argument_goes_to_a_file() {
        let plan = Bash.plan(b"echo \xff", false);
        assert_eq!(plan.argv[0], "/bin/sh");
        assert_eq!(&plan.stdin_prefix[..], b"echo \xff");
    }
}
