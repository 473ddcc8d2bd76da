//! InstallLibraries: libraries for one lease, installed into the sandbox
//! user's home (so the reset removes them). Package files already in the
//! container always install; names need the pool to allow the network for
//! installs, and the container is on that network only while the installer
//! runs.

use crate::{
    error::{Error, Result},
    files::{FileLimits, check_path},
    lang::InstallScope,
    pool::LeaseGuard,
    sandbox,
    spec::validate_library,
};

pub async fn install_for_lease(
    lease: &LeaseGuard,
    libraries: Vec<String>,
    limits: &FileLimits,
) -> Result<String> {
    if libraries.is_empty() {
        return Err(Error::invalid(
            "libraries",
            "is empty; name packages or package files",
        ));
    }
    let mut needs_network = false;
    let mut packages = Vec::with_capacity(libraries.len());
    for (i, lib) in libraries.into_iter().enumerate() {
        let field = format!("libraries[{i}]");
        if lib.starts_with('/') {
            packages.push(check_path(&field, &lib, &limits.allowed_roots)?);
        } else {
            validate_library(&lib).map_err(|message| Error::invalid(field, message))?;
            needs_network = true;
            packages.push(lib);
        }
    }
    let spec = lease.spec();
    let lang = lease.lang();
    if lang
        .install_command(&packages, InstallScope::Lease, None)
        .is_none()
    {
        return Err(Error::NotAllowed(format!(
            "sandpool has no library installer for {}",
            lang.name()
        )));
    }
    if needs_network && !spec.lease_installs {
        return Err(Error::NotAllowed(format!(
            "pool {:?} does not allow installs over the network on a lease (lease_installs is off); \
             upload package files and install them by path, or add the libraries to the pool",
            spec.name
        )));
    }
    let network = needs_network.then_some(spec.install_network.as_str());
    lease
        .sandbox()
        .install_libraries(&packages, network)
        .await
        .map_err(|e| match e {
            sandbox::Error::CommandFailed { detail, .. } => Error::InstallFailed(detail),
            other => lease.sandbox_error(other),
        })
}
