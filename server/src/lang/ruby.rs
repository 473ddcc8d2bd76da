//! Ruby. Code goes to `ruby -e BOOTSTRAP MODE ARG`, the way Python's does:
//! as an argument when it is small UTF-8 text and the run has no stdin,
//! otherwise on standard input, where the bootstrap reads exactly ARG bytes
//! (`sysread`, unbuffered, so the rest stays for the program). The code is
//! evaluated at top level as `main.rb` with `$0 == __FILE__`, so `if
//! __FILE__ == $0` blocks run, `require_relative` resolves against the working
//! directory and errors read `main.rb:3:in ...`, as for `ruby main.rb`.
//! No file is written and no shell is involved.

use bytes::Bytes;

use super::{CodePlan, Language};

pub struct Ruby;

/// Kept small: it is parsed on every run. Its variables live in a lambda, so
/// none leak into the top-level binding the code runs in. Frames of the
/// bootstrap (`-e:N`) are cut from backtraces; a syntax error in the code
/// itself (no frame of its own left) is printed the way `ruby main.rb`
/// prints it, with exit status 1.
const BOOTSTRAP: &str = r#"->(m, a) {
  s = m == "a" ? a.dup : String.new
  n = m == "a" ? 0 : a.to_i
  while s.bytesize < n
    c = (STDIN.sysread(n - s.bytesize) rescue nil) or break
    s << c
  end
  s.force_encoding(Encoding::UTF_8)
  ARGV.clear
  $0 = "main.rb"
  begin
    TOPLEVEL_BINDING.eval(s, "main.rb", 1)
  rescue Exception => e
    b = (e.backtrace || []).reject { |l| l.start_with?("-e:") }
    if b.empty? && e.is_a?(SyntaxError)
      STDERR.puts e.message
      exit 1
    end
    e.set_backtrace(b) unless b.empty?
    raise e
  end
}.(*ARGV)"#;

impl Language for Ruby {
    fn name(&self) -> &'static str {
        "ruby"
    }

    fn default_image(&self) -> &'static str {
        "sandpool/ruby:bookworm"
    }

    /// The real path of a run, through the bootstrap.
    fn check(&self) -> (Vec<String>, &'static str) {
        (
            self.plan(b"puts 'sandpool-' + 'ok'", false).argv,
            "sandpool-ok",
        )
    }

    fn plan(&self, code: &[u8], has_stdin: bool) -> CodePlan {
        let (mode, arg, stdin_prefix) = match super::as_argument(code, has_stdin) {
            Some(text) => ("a", text.to_string(), Bytes::new()),
            None => ("s", code.len().to_string(), Bytes::copy_from_slice(code)),
        };
        CodePlan {
            argv: vec![
                "ruby".into(),
                "-e".into(),
                BOOTSTRAP.into(),
                mode.into(),
                arg,
            ],
            stdin_prefix,
            env: Vec::new(),
        }
    }
}
