//! TypeScript on Node.js, offline: the image's esbuild strips the types
//! (no type check, as with `tsx` or Node's own type stripping), turns ES
//! module syntax into CommonJS and adds an inline source map, so that stack
//! traces name `main.ts` and its lines. It is JavaScript's bootstrap (see
//! `javascript.rs`) with the esbuild step always on; esbuild runs as a child
//! of that node process, which costs a few milliseconds, not a second
//! interpreter start. Syntax errors are esbuild's, on stderr, exit status 1.

use super::{
    CodePlan, InstallScope, Language,
    javascript::{NODE_IMAGE, node_plan},
};

pub struct TypeScript;

impl Language for TypeScript {
    fn name(&self) -> &'static str {
        "typescript"
    }

    fn default_image(&self) -> &'static str {
        NODE_IMAGE
    }

    /// Goes through esbuild and node, as every run does.
    fn check(&self) -> (Vec<String>, &'static str) {
        let plan = node_plan(
            b"const s: string = 'sandpool-' + 'ok'; console.log(s)",
            false,
            "ts",
        );
        (plan.argv, "sandpool-ok")
    }

    fn plan(&self, code: &[u8], has_stdin: bool) -> CodePlan {
        node_plan(code, has_stdin, "ts")
    }

    fn library_env(&self) -> Vec<(String, String)> {
        super::javascript::node_library_env()
    }

    fn install_command(
        &self,
        packages: &[String],
        scope: InstallScope,
        index_url: Option<&str>,
    ) -> Option<Vec<String>> {
        Some(super::javascript::npm_install_command(
            packages, scope, index_url,
        ))
    }
}
