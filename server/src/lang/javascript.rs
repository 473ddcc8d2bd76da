//! JavaScript on Node.js. Code goes to `node -e BOOTSTRAP MODE ARG EXT`, the
//! way Python's does: as an argument when it is small UTF-8 text and the run
//! has no stdin, otherwise on standard input, where the bootstrap reads
//! exactly ARG bytes and leaves the rest to the program. No file is written:
//! the code is compiled as the CommonJS module `main.js` in the working
//! directory, so `require('./helper')` finds uploaded files, `require.main
//! === module` holds and stack traces name `main.js`.
//!
//! Code that is not a valid CommonJS script is helped along, since code
//! written for modern Node often is not: ES module syntax (`import`/`export`)
//! is turned into CommonJS by the image's esbuild, with an inline source map
//! so that traces still point at the user's lines; top-level `await` in a
//! script runs inside an async function. TypeScript (`typescript.rs`) shares
//! this bootstrap and always takes the esbuild step.
//!
//! Not supported, as with `node -e`: code that starts itself again by file
//! name (`new Worker(__filename)`, `cluster`), since `main.js` exists only in
//! memory; such a program can be uploaded and run as a command.

use bytes::Bytes;

use super::{CodePlan, InstallScope, Language, POOL_LIBRARY_DIR};

pub struct JavaScript;

/// Node's image.
pub(super) const NODE_IMAGE: &str = "sandpool/node:bookworm";

/// Parsed on every run, kept small. Its names live in a closure so that none
/// reach the user's module. In order: read the code; for JavaScript, ask V8
/// whether it compiles as a CommonJS module (only when it mentions
/// import/export/await: a second parse of small code costs well under a
/// millisecond); strip types or ES module syntax with esbuild when needed (a
/// `cjs` build refuses top-level await, hence the retry wrapped in an async
/// function); compile the result as `main.EXT` with Node's own module loader
/// (`_compile`: the same path as `node main.js`, including dynamic
/// `import()` and source maps). esbuild's errors are the compile errors: they
/// go to stderr and the run exits with esbuild's status. Two traces of `-e`
/// are undone so that the code sees what `node main.js` would: the core
/// modules `-e` exposes as globals (`fs`, `path`...; kept: the real globals
/// `console`, `process` and, on newer Node, `crypto`), and `-e BOOTSTRAP` in
/// `process.execArgv`, which `child_process.fork` and workers would inherit.
const BOOTSTRAP: &str = r#"(()=>{
const M=require('module'),P=require('path'),fs=require('fs'),vm=require('vm');
const [exe,mode,arg,ext]=process.argv;
let src;
if(mode==='a')src=arg;
else{const n=+arg,b=Buffer.alloc(n);let o=0;
 while(o<n){let r;try{r=fs.readSync(0,b,o,n-o,null)}catch(e){if(e.code==='EAGAIN')continue;throw e}
  if(!r)break;o+=r}
 src=b.toString('utf8',0,o)}
const file=P.join(process.cwd(),'main.'+ext);
const wrap=s=>'(async()=>{'+s+'\n})()';
let code=src,strip=ext==='ts';
if(!strip&&/\b(import|export|await)\b/.test(src)){
 let f='';try{new vm.Script(M.wrap(src),{filename:file})}catch(e){if(e instanceof SyntaxError)f=e.message}
 if(/import statement|'export'/.test(f))strip=true;
 else if(/await is only valid/.test(f))code=wrap(src)}
if(strip){
 const esb=s=>require('child_process').spawnSync('esbuild',['--loader='+ext,'--format=cjs',
  '--platform=node','--target=node'+process.versions.node.split('.')[0],'--sourcemap=inline',
  '--sourcefile=main.'+ext,'--log-level=error','--color=false'],{input:s,maxBuffer:1<<30});
 let r=esb(src);
 if(r.status!==0&&/Top-level await/.test(r.stderr)){const w=esb(wrap(src));if(w.status===0)r=w}
 if(r.status!==0){process.stderr.write(r.error?'sandpool: cannot run esbuild: '+r.error.message+'\n':r.stderr);
  process.exitCode=r.status||1;return}
 code=r.stdout.toString();process.setSourceMapsEnabled(true)}
for(const n of M.builtinModules)if(!/^(console|process|crypto)$/.test(n)){
 const d=Object.getOwnPropertyDescriptor(globalThis,n);if(d&&d.get&&d.configurable)delete globalThis[n]}
const m=new M(file,null);m.filename=file;m.paths=M._nodeModulePaths(process.cwd());
process.mainModule=m;M._cache[file]=m;process.argv=[exe,file];process.execArgv=[];
m._compile(code,file);m.loaded=true})()"#;

/// The plan for code in the flavour `ext` ("js" or "ts").
pub(super) fn node_plan(code: &[u8], has_stdin: bool, ext: &str) -> CodePlan {
    let (mode, arg, stdin_prefix) = match super::as_argument(code, has_stdin) {
        Some(text) => ("a", text.to_string(), Bytes::new()),
        None => ("s", code.len().to_string(), Bytes::copy_from_slice(code)),
    };
    CodePlan {
        argv: vec![
            "node".into(),
            "-e".into(),
            BOOTSTRAP.into(),
            mode.into(),
            arg,
            ext.into(),
        ],
        stdin_prefix,
        env: Vec::new(),
    }
}

/// Where the lease's own packages go (under the home, so the reset removes
/// them); the pool's live under the support tmpfs.
const LEASE_NODE_PREFIX: &str = "/home/sandbox/.sandpool/node";

/// Node finds installed packages through NODE_PATH, after the node_modules
/// directories above the working directory.
pub(super) fn node_library_env() -> Vec<(String, String)> {
    vec![(
        "NODE_PATH".into(),
        format!("{POOL_LIBRARY_DIR}/node/node_modules:{LEASE_NODE_PREFIX}/node_modules"),
    )]
}

/// npm installs into a prefix of the scope; package files install offline.
pub(super) fn npm_install_command(
    packages: &[String],
    scope: InstallScope,
    index_url: Option<&str>,
) -> Vec<String> {
    let prefix = match scope {
        InstallScope::Pool => format!("{POOL_LIBRARY_DIR}/node"),
        InstallScope::Lease => LEASE_NODE_PREFIX.to_string(),
    };
    let mut argv: Vec<String> = [
        "npm",
        "install",
        "--no-audit",
        "--no-fund",
        "--no-update-notifier",
        "--no-save",
        "--loglevel=error",
        "--prefix",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    argv.push(prefix);
    if packages.iter().all(|p| p.starts_with('/')) {
        argv.push("--offline".into());
    } else if let Some(url) = index_url {
        argv.push(format!("--registry={url}"));
    }
    argv.push("--".into());
    argv.extend(packages.iter().cloned());
    argv
}

impl Language for JavaScript {
    fn name(&self) -> &'static str {
        "javascript"
    }

    fn default_image(&self) -> &'static str {
        NODE_IMAGE
    }

    /// The real path of a run: bootstrap, module loader, stdout.
    fn check(&self) -> (Vec<String>, &'static str) {
        let plan = node_plan(b"console.log('sandpool-' + 'ok')", false, "js");
        (plan.argv, "sandpool-ok")
    }

    fn plan(&self, code: &[u8], has_stdin: bool) -> CodePlan {
        node_plan(code, has_stdin, "js")
    }

    fn context_kernel(&self) -> Option<Vec<String>> {
        Some(vec![
            "node".into(),
            "-e".into(),
            include_str!("support/kernel.js").into(),
        ])
    }

    fn library_env(&self) -> Vec<(String, String)> {
        node_library_env()
    }

    fn install_command(
        &self,
        packages: &[String],
        scope: InstallScope,
        index_url: Option<&str>,
    ) -> Option<Vec<String>> {
        Some(npm_install_command(packages, scope, index_url))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_code_travels_as_an_argument() {
        let plan = JavaScript.plan(b"console.log(1)", false);
        assert_eq!(plan.argv[0], "node");
        assert_eq!(&plan.argv[3..], ["a", "console.log(1)", "js"]);
        assert!(plan.stdin_prefix.is_empty());
    }

    #[test]
    fn code_goes_on_stdin_when_the_run_has_input() {
        let plan = JavaScript.plan(b"console.log(1)", true);
        assert_eq!(&plan.argv[3..], ["s", "14", "js"]);
        assert_eq!(&plan.stdin_prefix[..], b"console.log(1)");
    }
}
