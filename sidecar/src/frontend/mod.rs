//! `coded-sidecar frontend`: the encoder/decoder in front of model and
//! parity instances, serving the same v2 surface as a worker.
//!
//! A request's rows become queries ([`engine`]); queries form coding groups
//! of k ([`group`]); each coding batch sends slot j of every group to one
//! model instance and the groups encoded for each of the r parities to an
//! instance of that parity, and answers every query with its real output
//! or a decoded one ([`batch`], around
//! [`batch_state`], which decides without I/O). Which
//! instances get calls is [`dispatch`]'s choice, informed by what each
//! [`instance`]'s calls showed and by the [`watcher`]'s conclusions, which
//! [`prometheus`] informs with the workers' latency across every frontend.
//! Which instances exist is [`discovery`]'s: a fixed list, or the addresses
//! of a Service, followed as pods come and go.

pub mod baseline;
pub mod batch;
pub mod batch_state;
mod cards;
pub mod discovery;
pub mod dispatch;
pub mod engine;
pub mod group;
pub mod instance;
pub mod metrics;
pub mod options;
pub mod prometheus;
pub mod trace;
pub mod watcher;

pub use baseline::DispatchMode;
pub use batch_state::ReconstructPolicy;
pub use discovery::parity_model_name;
pub use engine::{Frontend, Started};
pub use options::FrontendOptions;

use crate::http::{BearerToken, HttpError, V2Server};

/// Starts a frontend and binds its server (not yet serving).
pub async fn bind(options: &FrontendOptions) -> anyhow::Result<V2Server> {
    bind_with(options, discovery::system_resolver()).await
}

/// [`bind`] with the resolver that `--model-service` and `--parity-service`
/// names go through (tests give a fake one).
pub async fn bind_with(
    options: &FrontendOptions,
    resolver: discovery::Resolver,
) -> anyhow::Result<V2Server> {
    // A bad certificate, key or token file fails at once, not after the
    // instances are found (which waits for one to answer).
    crate::tls::ServerTls::from_options(&options.http.tls)?;
    let auth = options
        .auth_token_file
        .as_deref()
        .map(BearerToken::from_file)
        .transpose()?;
    let started = Frontend::start_with(options, resolver).await?;
    let http = crate::http::HttpOptions {
        shed: options.shed(),
        ..options.http.clone()
    };
    let server = V2Server::bind(
        started.engine,
        started.metrics.request.clone(),
        started.metrics.registry.clone(),
        &http,
        axum::Router::new(),
        auth,
    )
    .await
    .map_err(|e: HttpError| anyhow::anyhow!(e))?
    .with_background(started.assembler);
    Ok(server)
}
