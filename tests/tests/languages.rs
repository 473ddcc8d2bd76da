//! Every language but Python (see runs.rs) in a real container of its image:
//! hello world, a compile (or syntax) error, a runtime error, stdin, a
//! timeout after which the container still serves, unicode and binary
//! output, and the toolchain still working on the next lease after the
//! reset. Then what is particular to each handler (ES modules in
//! JavaScript, exit statuses through Go's build step, any class name in
//! Java...). One pool of one container per language; the languages run in
//! parallel, each in its own test.

use sandpool_client::{RunOutput, Session, proto as pb};
use sandpool_tests::{TestServer, secs};

/// What the common checks need from a language.
struct Case {
    language: &'static str,
    /// The image's language part: `sandpool/<image>:bookworm`.
    image: &'static str,
    /// Prints exactly "hello\n".
    hello: &'static str,
    /// Prints "started" first if it ever ran; must fail before running.
    compile_error: &'static str,
    /// Each must appear on stderr after the compile error.
    compile_markers: &'static [&'static str],
    /// Fails while running.
    runtime_error: &'static str,
    runtime_markers: &'static [&'static str],
    runtime_exit: i32,
    runtime_reason: pb::EndReason,
    /// Copies stdin to stdout in upper case.
    upper_stdin: &'static str,
    /// Prints "started\n" (flushed), then loops forever.
    spin: &'static str,
    /// Prints exactly "héllo ✓\n".
    unicode: &'static str,
    /// Writes the bytes 0 to 255, in order, and nothing else.
    binary: &'static str,
    /// Timeout for the spinning run: above the build time (compilers get
    /// slow when every language's test runs at once), still short.
    spin_timeout: f64,
}

fn image(case: &Case) -> String {
    format!("sandpool/{}:bookworm", case.image)
}

fn request(code: &str) -> pb::RunRequest {
    pb::RunRequest {
        program: Some(pb::run_request::Program::Code(pb::Code {
            source: Some(pb::code::Source::Text(code.into())),
            language: String::new(),
        })),
        ..Default::default()
    }
}

async fn run(session: &Session, req: pb::RunRequest) -> RunOutput {
    session
        .run_request(req)
        .await
        .expect("run starts")
        .collect()
        .await
        .expect("run ends")
}

async fn run_code(session: &Session, code: &str) -> RunOutput {
    run(session, request(code)).await
}

/// `out` ended normally with status 0 and printed `stdout`.
#[track_caller]
fn assert_prints(out: &RunOutput, stdout: &[u8], what: &str) {
    assert_eq!(
        (out.end_reason(), out.exit_code()),
        (pb::EndReason::Exited, 0),
        "{what}: stderr {:?}",
        out.stderr_text()
    );
    assert_eq!(
        out.stdout.as_ref(),
        stdout,
        "{what}: stdout {:?}, stderr {:?}",
        out.stdout_text(),
        out.stderr_text()
    );
}

/// Starts a server with a warm pool of one container for `case` and leases
/// it, then runs the checks every language shares.
async fn common_checks(case: &Case) -> (TestServer, Session) {
    let server = TestServer::start().await;
    let pool = server
        .pool(pb::PoolSpec {
            name: case.language.into(),
            language: case.language.into(),
            image: image(case),
            config: Some(pb::PoolConfig {
                min_pool_size: Some(1),
                max_pool_size: Some(1),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    assert_eq!(
        pool.phase,
        pb::PoolPhase::Ready as i32,
        "{}",
        pool.status_message
    );
    let session = server.client.acquire(case.language).await.expect("acquire");
    let lang = case.language;

    let out = run_code(&session, case.hello).await;
    assert_prints(&out, b"hello\n", &format!("{lang} hello world"));

    let out = run_code(&session, case.compile_error).await;
    assert_eq!(
        out.end_reason(),
        pb::EndReason::Exited,
        "{lang} compile error"
    );
    assert_ne!(out.exit_code(), 0, "{lang} compile error");
    assert!(
        out.stdout.is_empty(),
        "{lang}: code with a compile error must not run: {:?}",
        out.stdout_text()
    );
    let err = out.stderr_text();
    for marker in case.compile_markers {
        assert!(
            err.contains(marker),
            "{lang} compile error: {marker:?} not in stderr {err:?}"
        );
    }

    let out = run_code(&session, case.runtime_error).await;
    assert_eq!(
        (out.end_reason(), out.exit_code()),
        (case.runtime_reason, case.runtime_exit),
        "{lang} runtime error: stderr {:?}",
        out.stderr_text()
    );
    let err = out.stderr_text();
    for marker in case.runtime_markers {
        assert!(
            err.contains(marker),
            "{lang} runtime error: {marker:?} not in stderr {err:?}"
        );
    }

    let out = run(
        &session,
        pb::RunRequest {
            stdin: bytes::Bytes::from_static("hello stdin\nsecond line é\n".as_bytes()),
            ..request(case.upper_stdin)
        },
    )
    .await;
    assert_prints(
        &out,
        "HELLO STDIN\nSECOND LINE É\n".as_bytes(),
        &format!("{lang} stdin"),
    );

    let out = run(
        &session,
        pb::RunRequest {
            timeout: secs(case.spin_timeout),
            ..request(case.spin)
        },
    )
    .await;
    assert_eq!(
        out.end_reason(),
        pb::EndReason::Timeout,
        "{lang} infinite loop: stderr {:?}",
        out.stderr_text()
    );
    assert_eq!(
        out.stdout_text(),
        "started\n",
        "{lang}: the loop itself must have been running when the timeout hit: stderr {:?}",
        out.stderr_text()
    );
    let out = run_code(&session, case.hello).await;
    assert_prints(&out, b"hello\n", &format!("{lang} hello after a timeout"));

    let out = run_code(&session, case.unicode).await;
    assert_prints(&out, "héllo ✓\n".as_bytes(), &format!("{lang} unicode"));

    let out = run_code(&session, case.binary).await;
    let bytes: Vec<u8> = (0..=255).collect();
    assert_prints(&out, &bytes, &format!("{lang} binary output"));
    (server, session)
}

/// Releases the lease, takes the (reset) container again, checks that the
/// toolchain still works, and stops the server.
async fn after_reset(case: &Case, server: TestServer, session: Session) {
    let first = session.container_id().to_string();
    session.release().await.expect("release");
    let session = server
        .client
        .acquire(case.language)
        .await
        .expect("acquire again");
    assert_eq!(
        session.container_id(),
        first,
        "a pool of one reuses its container"
    );
    let out = session
        .shell("ls -A /sandbox /tmp /home/sandbox | grep -v '^/\\|^$\\|outputs' || true")
        .await
        .expect("list");
    assert_eq!(
        out.stdout_text(),
        "",
        "the reset leaves nothing of the last lease"
    );
    let out = run_code(&session, case.hello).await;
    assert_prints(
        &out,
        b"hello\n",
        &format!("{} hello on the next lease", case.language),
    );
    session.release().await.expect("release");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript() {
    let case = Case {
        language: "javascript",
        image: "node",
        hello: "console.log('hello')",
        compile_error: "console.log('started');\nlet x = ;",
        compile_markers: &["SyntaxError", "main.js:2"],
        runtime_error: "function f() {\n  throw new Error('boom');\n}\nf();",
        runtime_markers: &["Error: boom", "main.js:2"],
        runtime_exit: 1,
        runtime_reason: pb::EndReason::Exited,
        upper_stdin: "process.stdout.write(require('fs').readFileSync(0, 'utf8').toUpperCase())",
        spin: "console.log('started');\nwhile (true) {}",
        unicode: "console.log('h\\u00e9llo ✓')",
        binary: "process.stdout.write(Buffer.from([...Array(256).keys()]))",
        spin_timeout: 2.0,
    };
    let (server, session) = common_checks(&case).await;

    // A module, the way `node main.js` runs it.
    let out = run_code(
        &session,
        "console.log(require.main === module, __filename, process.argv.length)",
    )
    .await;
    assert_prints(&out, b"true /sandbox/main.js 2\n", "main module");
    // ES module syntax and top-level await, which a CommonJS script rejects.
    let out = run_code(
        &session,
        "import { basename } from 'path';\nexport const x = 1;\nconsole.log(basename('/a/b.txt'));",
    )
    .await;
    assert_prints(&out, b"b.txt\n", "import/export");
    let out = run_code(
        &session,
        "const v = await new Promise((r) => setTimeout(() => r(42), 10));\nconsole.log(v);",
    )
    .await;
    assert_prints(&out, b"42\n", "top-level await");
    // Traces of transformed code still point at the user's line.
    let out = run_code(
        &session,
        "import os from 'os';\n\nthrow new Error('esm boom ' + typeof os.cpus);",
    )
    .await;
    assert_eq!(out.exit_code(), 1);
    assert!(
        out.stderr_text().contains("main.js:3"),
        "{}",
        out.stderr_text()
    );
    // Files beside the code resolve from the working directory.
    let out = session
        .shell("echo 'module.exports = 6 * 7;' > /sandbox/answer.js")
        .await
        .expect("write a module");
    assert_eq!(out.exit_code(), 0);
    let out = run_code(&session, "console.log(require('./answer'))").await;
    assert_prints(&out, b"42\n", "require of an uploaded file");
    // What `node -e` adds is gone: core modules as globals, and `-e` in the
    // execArgv that `fork` passes on.
    let out = session
        .shell("echo 'process.send(\"hi\", () => process.disconnect())' > /sandbox/child.js")
        .await
        .expect("write a child");
    assert_eq!(out.exit_code(), 0);
    let out = run_code(
        &session,
        "console.log(typeof fs, typeof path, typeof console);\nconst c = require('child_process').fork('./child.js');\nc.on('message', (m) => console.log('child says', m));\nc.on('exit', (code) => console.log('child exit', code));",
    )
    .await;
    assert_prints(
        &out,
        b"undefined undefined object\nchild says hi\nchild exit 0\n",
        "globals and fork",
    );
    // process.exitCode and unhandled rejections.
    let out = run_code(&session, "process.exitCode = 5").await;
    assert_eq!(out.exit_code(), 5);
    let out = run_code(&session, "Promise.reject(new Error('nobody catches'))").await;
    assert_eq!(out.exit_code(), 1);
    assert!(out.stderr_text().contains("nobody catches"));
    // Code too large to be an argument goes on stdin (ahead of no input).
    let big = format!("// {}\nconsole.log('big')", "pad ".repeat(30_000));
    let out = run_code(&session, &big).await;
    assert_prints(&out, b"big\n", "large code");
    after_reset(&case, server, session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript() {
    let case = Case {
        language: "typescript",
        image: "node",
        hello: "const greeting: string = 'hello';\nconsole.log(greeting);",
        compile_error: "console.log('started');\nconst x: number = ;",
        compile_markers: &["main.ts:2", "Unexpected"],
        runtime_error: "interface Box { n: number }\nfunction f(b: Box): never {\n  throw new Error('boom ' + b.n);\n}\nf({ n: 1 });",
        // The source map takes the trace back to the TypeScript line.
        runtime_markers: &["Error: boom 1", "main.ts:3"],
        runtime_exit: 1,
        runtime_reason: pb::EndReason::Exited,
        upper_stdin: "import { readFileSync } from 'fs';\nconst s: string = readFileSync(0, 'utf8');\nprocess.stdout.write(s.toUpperCase());",
        spin: "console.log('started');\nwhile (true as boolean) {}",
        unicode: "const s: string = 'h\\u00e9llo ✓';\nconsole.log(s);",
        binary: "const b: Buffer = Buffer.from([...Array(256).keys()]);\nprocess.stdout.write(b);",
        spin_timeout: 2.0,
    };
    let (server, session) = common_checks(&case).await;

    // Types are stripped, not checked (as with tsx or node's type stripping).
    let out = run_code(&session, "const n: number = 'not a number' as any;\nenum Color { Red, Green }\nclass P { constructor(private x: number) {} get() { return this.x } }\nconsole.log(n, Color.Green, new P(3).get());").await;
    assert_prints(&out, b"not a number 1 3\n", "types, enums, classes");
    let out = run_code(
        &session,
        "const v: number = await Promise.resolve(7);\nconsole.log(v);",
    )
    .await;
    assert_prints(&out, b"7\n", "top-level await");
    after_reset(&case, server, session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go() {
    let case = Case {
        language: "go",
        image: "go",
        hello: "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"hello\") }\n",
        compile_error: "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(\"started\")\n\tx := undefinedThing\n}\n",
        compile_markers: &["./main.go:7:", "undefined: undefinedThing"],
        runtime_error: "package main\n\nfunc main() {\n\tvar m map[string]int\n\tm[\"x\"] = 1\n}\n",
        runtime_markers: &["panic: assignment to entry in nil map", "\tmain.go:5"],
        runtime_exit: 2,
        runtime_reason: pb::EndReason::Exited,
        upper_stdin: "package main\n\nimport (\n\t\"io\"\n\t\"os\"\n\t\"strings\"\n)\n\nfunc main() {\n\tb, _ := io.ReadAll(os.Stdin)\n\tos.Stdout.WriteString(strings.ToUpper(string(b)))\n}\n",
        spin: "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(\"started\")\n\tfor {\n\t}\n}\n",
        unicode: "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"h\\u00e9llo ✓\") }\n",
        binary: "package main\n\nimport \"os\"\n\nfunc main() {\n\tb := make([]byte, 256)\n\tfor i := range b {\n\t\tb[i] = byte(i)\n\t}\n\tos.Stdout.Write(b)\n}\n",
        spin_timeout: 4.0,
    };
    let (server, session) = common_checks(&case).await;

    // The program's own exit status, not `go run`'s 1.
    let out = run_code(
        &session,
        "package main\n\nimport \"os\"\n\nfunc main() { os.Exit(3) }\n",
    )
    .await;
    assert_eq!((out.exit_code(), out.stderr_text()), (3, String::new()));
    // A larger part of the standard library, from the image's cache.
    let out = run_code(&session, "package main\n\nimport (\n\t\"encoding/json\"\n\t\"fmt\"\n\t\"net/http\"\n)\n\nfunc main() {\n\tb, _ := json.Marshal(map[string]int{\"ok\": http.StatusOK})\n\tfmt.Println(string(b))\n}\n").await;
    assert_prints(&out, b"{\"ok\":200}\n", "net/http and encoding/json");
    after_reset(&case, server, session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java() {
    let case = Case {
        language: "java",
        image: "java",
        hello: "public class Main {\n  public static void main(String[] args) {\n    System.out.println(\"hello\");\n  }\n}\n",
        compile_error: "public class Main {\n  public static void main(String[] args) {\n    System.out.println(\"started\");\n    int x = ;\n  }\n}\n",
        compile_markers: &["Main.java:4: error:", "compilation failed"],
        runtime_error: "public class Main {\n  public static void main(String[] args) {\n    throw new IllegalStateException(\"boom\");\n  }\n}\n",
        runtime_markers: &["java.lang.IllegalStateException: boom", "Main.java:3"],
        runtime_exit: 1,
        runtime_reason: pb::EndReason::Exited,
        upper_stdin: "public class Main {\n  public static void main(String[] args) throws Exception {\n    String s = new String(System.in.readAllBytes(), \"UTF-8\");\n    System.out.print(s.toUpperCase());\n  }\n}\n",
        spin: "public class Main {\n  public static void main(String[] args) {\n    System.out.println(\"started\");\n    while (true) {}\n  }\n}\n",
        unicode: "public class Main {\n  public static void main(String[] args) {\n    System.out.println(\"h\\u00e9llo ✓\");\n  }\n}\n",
        binary: "public class Main {\n  public static void main(String[] args) {\n    byte[] b = new byte[256];\n    for (int i = 0; i < 256; i++) b[i] = (byte) i;\n    System.out.write(b, 0, b.length);\n    System.out.flush();\n  }\n}\n",
        spin_timeout: 5.0,
    };
    let (server, session) = common_checks(&case).await;

    // Any class name, helper classes, System.exit.
    let out = run_code(&session, "import java.util.*;\n\npublic class Solution {\n  public static void main(String[] args) {\n    List<Integer> l = new ArrayList<>(List.of(3, 1, 2));\n    Collections.sort(l);\n    System.out.println(Helper.show(l));\n    System.exit(4);\n  }\n}\n\nclass Helper {\n  static String show(List<Integer> l) { return l.toString(); }\n}\n").await;
    assert_eq!(
        (out.stdout_text(), out.exit_code()),
        ("[1, 2, 3]\n".to_string(), 4),
        "{}",
        out.stderr_text()
    );
    after_reset(&case, server, session).await;
}

/// Upper-cases UTF-8 input (C and C++): `toupper` on bytes would leave "é"
/// alone, the wide functions in the environment's UTF-8 locale do not.
const C_UPPER_STDIN: &str = "#include <locale.h>\n#include <stdio.h>\n#include <wchar.h>\n#include <wctype.h>\nint main(void) {\n  setlocale(LC_ALL, \"\");\n  wint_t c;\n  while ((c = getwchar()) != WEOF) putwchar(towupper(c));\n  return 0;\n}\n";

const C_BINARY: &str = "#include <stdio.h>\nint main(void) {\n  for (int i = 0; i < 256; i++) putchar(i);\n  return 0;\n}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpp() {
    let case = Case {
        language: "cpp",
        image: "cpp",
        hello: "#include <iostream>\nint main() { std::cout << \"hello\" << std::endl; }\n",
        compile_error: "#include <iostream>\nint main() {\n  std::cout << \"started\" << std::endl;\n  return undeclared;\n}\n",
        compile_markers: &["main.cpp:4:", "error:", "undeclared"],
        runtime_error: "#include <stdexcept>\nint main() { throw std::runtime_error(\"boom\"); }\n",
        runtime_markers: &["what():  boom"],
        runtime_exit: 134,
        runtime_reason: pb::EndReason::Signaled,
        upper_stdin: C_UPPER_STDIN,
        spin: "#include <cstdio>\nint main() {\n  std::puts(\"started\");\n  std::fflush(stdout);\n  for (volatile unsigned long i = 0;; i++) {}\n}\n",
        unicode: "#include <iostream>\nint main() { std::cout << \"h\\u00e9llo ✓\" << std::endl; }\n",
        binary: C_BINARY,
        spin_timeout: 4.0,
    };
    let (server, session) = common_checks(&case).await;

    // C++17, and the precompiled <bits/stdc++.h> (its flags match ours).
    let out = run_code(&session, "#include <bits/stdc++.h>\nusing namespace std;\nint main() {\n  map<string, int> m{{\"a\", 1}};\n  if (auto [it, ok] = m.try_emplace(\"b\", 2); ok) cout << it->second << endl;\n  optional<int> o = 5;\n  cout << *o << endl;\n}\n").await;
    assert_prints(&out, b"2\n5\n", "C++17 with bits/stdc++.h");
    // A header uploaded to the working directory.
    let out = session
        .shell("printf 'inline int answer() { return 42; }\\n' > /sandbox/answer.h")
        .await
        .expect("write a header");
    assert_eq!(out.exit_code(), 0);
    let out = run_code(
        &session,
        "#include <iostream>\n#include \"answer.h\"\nint main() { std::cout << answer() << std::endl; }\n",
    )
    .await;
    assert_prints(&out, b"42\n", "#include of an uploaded header");
    after_reset(&case, server, session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c() {
    let case = Case {
        language: "c",
        image: "cpp",
        hello: "#include <stdio.h>\nint main(void) { puts(\"hello\"); return 0; }\n",
        compile_error: "#include <stdio.h>\nint main(void) {\n  puts(\"started\");\n  return undeclared;\n}\n",
        compile_markers: &["main.c:4:", "error:", "undeclared"],
        runtime_error: "#include <stdio.h>\nint main(void) {\n  fputs(\"boom\\n\", stderr);\n  int *volatile p = 0;\n  return *p;\n}\n",
        runtime_markers: &["boom"],
        runtime_exit: 139,
        runtime_reason: pb::EndReason::Signaled,
        upper_stdin: C_UPPER_STDIN,
        spin: "#include <stdio.h>\nint main(void) {\n  puts(\"started\");\n  fflush(stdout);\n  for (volatile unsigned long i = 0;; i++) {}\n}\n",
        unicode: "#include <stdio.h>\nint main(void) { puts(\"h\\u00e9llo ✓\"); return 0; }\n",
        binary: C_BINARY,
        spin_timeout: 3.0,
    };
    let (server, session) = common_checks(&case).await;

    // The exit status is the program's; <math.h> links.
    let out = run_code(&session, "#include <math.h>\n#include <stdio.h>\nint main(void) { printf(\"%.3f\\n\", sqrt(2.0)); return 7; }\n").await;
    assert_eq!(
        (out.stdout_text(), out.exit_code()),
        ("1.414\n".to_string(), 7)
    );
    after_reset(&case, server, session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust() {
    let case = Case {
        language: "rust",
        image: "rust",
        hello: "fn main() {\n    println!(\"hello\");\n}\n",
        compile_error: "fn main() {\n    println!(\"started\");\n    let x: u32 = \"text\";\n}\n",
        compile_markers: &["error[E0308]: mismatched types", "main.rs:3:"],
        runtime_error: "fn main() {\n    let v: Vec<u32> = Vec::new();\n    println!(\"{}\", v[3]);\n}\n",
        runtime_markers: &["panicked at main.rs:3:", "index out of bounds"],
        runtime_exit: 101,
        runtime_reason: pb::EndReason::Exited,
        upper_stdin: "use std::io::Read;\n\nfn main() {\n    let mut s = String::new();\n    std::io::stdin().read_to_string(&mut s).unwrap();\n    print!(\"{}\", s.to_uppercase());\n}\n",
        spin: "use std::io::Write;\n\nfn main() {\n    println!(\"started\");\n    std::io::stdout().flush().unwrap();\n    let mut i: u64 = 0;\n    loop {\n        i = std::hint::black_box(i.wrapping_add(1));\n    }\n}\n",
        unicode: "fn main() {\n    println!(\"h\\u{e9}llo ✓\");\n}\n",
        binary: "use std::io::Write;\n\nfn main() {\n    let b: Vec<u8> = (0..=255).collect();\n    std::io::stdout().write_all(&b).unwrap();\n}\n",
        spin_timeout: 4.0,
    };
    let (server, session) = common_checks(&case).await;

    // Debug semantics: integer overflow panics. Warnings stay out of stderr;
    // newer std and language features compile (a current rustc, not 1.63).
    let out = run_code(&session, "fn main() {\n    let x: u8 = std::hint::black_box(255);\n    println!(\"{}\", x + 1);\n}\n").await;
    assert_eq!(out.exit_code(), 101);
    assert!(
        out.stderr_text().contains("overflow"),
        "{}",
        out.stderr_text()
    );
    let out = run_code(&session, "use std::sync::OnceLock;\n\nstatic CELL: OnceLock<u32> = OnceLock::new();\n\nfn main() {\n    let unused = 1;\n    let Some(v) = Some(*CELL.get_or_init(|| 41)) else { return };\n    println!(\"{}\", v + 1);\n}\n").await;
    assert_prints(&out, b"42\n", "let-else, OnceLock, an unused variable");
    assert_eq!(out.stderr_text(), "");
    after_reset(&case, server, session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ruby() {
    let case = Case {
        language: "ruby",
        image: "ruby",
        hello: "puts 'hello'",
        compile_error: "puts 'started'\nx = (",
        compile_markers: &["main.rb:2: syntax error"],
        runtime_error: "def f\n  raise ArgumentError, 'boom'\nend\nf",
        runtime_markers: &["main.rb:2:in `f': boom (ArgumentError)", "from main.rb:4"],
        runtime_exit: 1,
        runtime_reason: pb::EndReason::Exited,
        upper_stdin: "print STDIN.read.upcase",
        spin: "puts 'started'\nSTDOUT.flush\nloop {}",
        unicode: "puts \"h\\u00e9llo ✓\"",
        binary: "STDOUT.binmode\nSTDOUT.write((0..255).to_a.pack('C*'))",
        spin_timeout: 2.0,
    };
    let (server, session) = common_checks(&case).await;

    // A script's identity; no bootstrap variable is visible; exit statuses.
    let out = run_code(
        &session,
        "p __FILE__ == $0, $0, ARGV, local_variables\nexit 6",
    )
    .await;
    assert_eq!(
        (out.stdout_text(), out.exit_code()),
        ("true\n\"main.rb\"\n[]\n[]\n".to_string(), 6),
        "{}",
        out.stderr_text()
    );
    after_reset(&case, server, session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r() {
    let case = Case {
        language: "r",
        image: "r",
        hello: "cat('hello\\n')",
        compile_error: "x <- )\ncat('started\\n')",
        compile_markers: &["unexpected ')'"],
        runtime_error: "f <- function() stop('boom')\nf()",
        runtime_markers: &["boom", "Execution halted"],
        runtime_exit: 1,
        runtime_reason: pb::EndReason::Exited,
        upper_stdin: "x <- readLines(file('stdin'))\ncat(toupper(x), sep = '\\n')",
        spin: "cat('started\\n')\nflush(stdout())\nrepeat {}",
        unicode: "cat('h\\u00e9llo ✓\\n')",
        binary: "con <- file('/dev/stdout', 'wb', raw = TRUE)\nwriteBin(as.raw(0:255), con)\nclose(con)",
        spin_timeout: 3.0,
    };
    let (server, session) = common_checks(&case).await;

    let out = run_code(&session, "quit(status = 3)").await;
    assert_eq!(out.exit_code(), 3);
    after_reset(&case, server, session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bash() {
    let case = Case {
        language: "bash",
        image: "bash",
        hello: "echo hello",
        compile_error: "echo started; if then fi",
        compile_markers: &["main.sh:", "syntax error"],
        runtime_error: "no_such_command_here",
        runtime_markers: &["main.sh: line 1: no_such_command_here: command not found"],
        runtime_exit: 127,
        runtime_reason: pb::EndReason::Exited,
        upper_stdin: "while IFS= read -r line; do echo \"${line^^}\"; done",
        spin: "echo started\nwhile :; do :; done",
        unicode: "echo 'h\u{e9}llo ✓'",
        binary: "for i in $(seq 0 255); do printf \"\\\\$(printf %03o \"$i\")\"; done",
        spin_timeout: 2.0,
    };
    let (server, session) = common_checks(&case).await;

    // Bash features, $0, and code that is not UTF-8 (it goes to a file).
    let out = run_code(
        &session,
        "declare -A m=([k]=v); a=(1 2 3); echo \"$0 ${m[k]} ${#a[@]} $((6*7))\"",
    )
    .await;
    assert_prints(&out, b"main.sh v 3 42\n", "bash features");
    let out = run(
        &session,
        pb::RunRequest {
            program: Some(pb::run_request::Program::Code(pb::Code {
                source: Some(pb::code::Source::Data(
                    b"printf '%s' '\xff' | od -An -tx1 | tr -d ' '"
                        .to_vec()
                        .into(),
                )),
                language: String::new(),
            })),
            ..Default::default()
        },
    )
    .await;
    assert_prints(&out, b"ff\n", "code that is not UTF-8");
    after_reset(&case, server, session).await;
}

/// Every language is known, and a pool that names no image gets the
/// language's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_language_is_known_with_its_default_image() {
    let server = TestServer::start().await;
    let expected = [
        ("python", "sandpool/python:bookworm"),
        ("javascript", "sandpool/node:bookworm"),
        ("typescript", "sandpool/node:bookworm"),
        ("go", "sandpool/go:bookworm"),
        ("java", "sandpool/java:bookworm"),
        ("cpp", "sandpool/cpp:bookworm"),
        ("c", "sandpool/cpp:bookworm"),
        ("rust", "sandpool/rust:bookworm"),
        ("ruby", "sandpool/ruby:bookworm"),
        ("r", "sandpool/r:bookworm"),
        ("bash", "sandpool/bash:bookworm"),
    ];
    for (language, default_image) in expected {
        // Not warmed (min 0): only the spec is checked and filled in.
        let pool = server
            .client
            .create_pool(
                pb::PoolSpec {
                    name: format!("known-{language}"),
                    language: language.into(),
                    config: Some(pb::PoolConfig {
                        min_pool_size: Some(0),
                        max_pool_size: Some(1),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                false,
            )
            .await
            .unwrap_or_else(|e| panic!("create a {language} pool: {e}"));
        let spec = pool.spec.expect("spec");
        assert_eq!(spec.image, default_image, "{language}");
    }
    server.stop().await;
}
