//! Rust client for sandpool.
//!
//! ```no_run
//! # async fn demo() -> Result<(), sandpool_client::Error> {
//! let client = sandpool_client::Client::connect("http://127.0.0.1:50051").await?;
//! let session = client.acquire("python").await?;
//! let out = session.run_collect("print('hi')").await?;
//! assert_eq!(out.stdout_text(), "hi\n");
//! session.release().await?;
//! # Ok(()) }
//! ```
//!
//! A [`Session`] keeps its lease alive in the background (at a third of its
//! TTL) and releases it on [`Session::release`] or when dropped. An
//! [`OwnedPool`] ([`Client::create_owned_pool`]) is a pool kept alive the
//! same way, deleted by [`OwnedPool::delete`], when dropped, or by the
//! server when its creator stops keeping it alive.

mod client;
mod error;
mod interact;
mod keepalive;
mod owned;
mod run;
mod session;
mod trace;

pub use client::{Client, ClientBuilder, DEFAULT_ACQUIRE_WAIT, DEFAULT_TIMEOUT};
pub use error::{ERROR_DOMAIN, Error, LEASE_REASONS};
pub use interact::{InteractInput, Interaction};
pub use owned::{DEFAULT_OWNER_TTL, OwnedPool};
pub use run::{ArtifactFile, RunEvent, RunOptions, RunOutput, RunStream};
pub use sandpool_proto::v1 as proto;
pub use session::{AcquireOptions, Context, Session};
