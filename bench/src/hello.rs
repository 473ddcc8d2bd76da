//! Hello world in every language sandpool runs, and what the floor of each
//! is: the exact command line and environment sandpool executes for it.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sandpool_client::Session;

/// A hello world: language, image (sandpool/<image>:bookworm), code that
/// prints exactly "hello\n".
#[derive(Debug, Clone, Copy)]
pub struct Hello {
    pub language: &'static str,
    pub image: &'static str,
    pub code: &'static str,
}

/// Every language, Python last.
pub const HELLO: &[Hello] = &[
    Hello {
        language: "javascript",
        image: "node",
        code: "console.log('hello')",
    },
    Hello {
        language: "typescript",
        image: "node",
        code: "const greeting: string = 'hello';\nconsole.log(greeting);",
    },
    Hello {
        language: "go",
        image: "go",
        code: "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"hello\") }\n",
    },
    Hello {
        language: "java",
        image: "java",
        code: "public class Main {\n  public static void main(String[] args) {\n    System.out.println(\"hello\");\n  }\n}\n",
    },
    Hello {
        language: "cpp",
        image: "cpp",
        code: "#include <iostream>\nint main() { std::cout << \"hello\" << std::endl; }\n",
    },
    Hello {
        language: "c",
        image: "cpp",
        code: "#include <stdio.h>\nint main(void) { puts(\"hello\"); return 0; }\n",
    },
    Hello {
        language: "rust",
        image: "rust",
        code: "fn main() {\n    println!(\"hello\");\n}\n",
    },
    Hello {
        language: "ruby",
        image: "ruby",
        code: "puts 'hello'",
    },
    Hello {
        language: "r",
        image: "r",
        code: "cat('hello\\n')",
    },
    Hello {
        language: "bash",
        image: "bash",
        code: "echo hello",
    },
    Hello {
        language: "python",
        image: "python",
        code: "print('hello')",
    },
];

/// What every hello world prints.
pub const HELLO_OUTPUT: &[u8] = b"hello\n";

impl Hello {
    /// The pool image.
    pub fn image_ref(&self) -> String {
        format!("sandpool/{}:bookworm", self.image)
    }

    /// The floor's command: the language plan's argv and environment
    /// (`KEY=value`), exactly what sandpool executes for this code.
    pub fn floor_command(&self) -> anyhow::Result<(Vec<String>, Vec<String>)> {
        let handler = sandpool_server::lang::lookup(self.language)
            .with_context(|| format!("unknown language {}", self.language))?;
        let plan = handler.plan(self.code.as_bytes(), false);
        if !plan.stdin_prefix.is_empty() {
            bail!(
                "{}: hello world should travel as an argument",
                self.language
            );
        }
        let env = plan.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        Ok((plan.argv, env))
    }

    /// One leased run of the hello world, from the request to the exit event.
    pub async fn leased_run(&self, session: &Session) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let out = session.run_collect(self.code).await?;
        let took = started.elapsed();
        if out.stdout != HELLO_OUTPUT || out.exit_code() != 0 {
            bail!(
                "{} run printed {:?}, exit {}: {}",
                self.language,
                out.stdout_text(),
                out.exit_code(),
                out.stderr_text()
            );
        }
        Ok(took)
    }
}
