//! Wiring: `Application::build` opens the database, builds the cloud provider, binds the
//! listener (port 0 allowed) and `run_until_stopped` serves the API and runs the job workers
//! until shutdown is requested.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiContext};
use crate::auth::Authenticator;
use crate::cloud::{AwsProvider, Catalog, DescribeBatcher, Provider};
use crate::config::{ProcessRole, ReconcileSettings, ServerSettings, Settings};
use crate::domain::Backend;
use crate::jobs::{self, JobContext, Queue};
use crate::notify::{self, Notifier};
use crate::storage::Store;
use crate::terraform::Terraform;

pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    server: ServerSettings,
    tls: Option<Arc<rustls::ServerConfig>>,
    api: ApiContext,
    jobs: Arc<JobContext>,
    notifier: Arc<Notifier>,
    reconcile: ReconcileSettings,
    role: ProcessRole,
}

impl Application {
    /// Builds the application against AWS (or the emulator `AWS_ENDPOINT_URL` names).
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let aws = AwsProvider::from_settings(&settings.aws).await;
        match aws.endpoint_url() {
            Some(url) => tracing::warn!(
                endpoint = url,
                "SANDBOX: EC2 calls go to {url}, not to AWS; nothing created here is real"
            ),
            None if !aws.has_credentials().await => tracing::error!(
                "no AWS credentials found (environment, ~/.aws, or instance role): cloud jobs \
                 will fail until credentials are configured, or set AWS_ENDPOINT_URL to use an \
                 emulator"
            ),
            None => tracing::info!("EC2 calls go to AWS"),
        }
        Application::build_with_provider(settings, Arc::new(aws)).await
    }

    pub async fn build_with_provider(
        settings: Settings,
        provider: Arc<dyn Provider>,
    ) -> anyhow::Result<Application> {
        let store =
            Store::connect(&settings.database_url).await?.with_recipients(&settings.notify.email);
        anyhow::ensure!(
            settings.role == ProcessRole::All || store.is_shared(),
            "--role {} needs a database shared with the other roles (postgres://…); with SQLite \
             run one process with --role all",
            settings.role.as_str()
        );
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("binding {}", settings.listen))?;
        let local_addr = listener.local_addr()?;
        let tls = crate::server::tls_config(&settings.server)?;
        let public_url = settings
            .notify
            .public_url
            .clone()
            .unwrap_or_else(|| crate::server::url(local_addr, tls.is_some()));
        let notifier = Arc::new(Notifier::new(store.clone(), settings.notify.clone(), public_url)?);
        let auth = Arc::new(Authenticator::new(store.clone(), &settings.auth).await?);
        if settings.role.serves_api() {
            auth.bootstrap(&settings.auth, &settings.data_dir()).await?;
        }
        // A worker-only process serves no state API of its own: its runs need to be told where
        // one is. The state URL is a setting of its own: `notify.public_url` is where people
        // open links, which need not be an address this server reaches itself at.
        let state_url_known = settings.role.serves_api() || settings.terraform.state_url.is_some();
        let terraform = match Terraform::locate(&settings.terraform.binary) {
            Some(_) if !state_url_known => {
                tracing::warn!(
                    "the Terraform backend is off in this worker: set terraform.state_url \
                     (CORRAL_TERRAFORM_STATE_URL) to the API's address"
                );
                None
            }
            Some(binary) => {
                let state_url = settings.terraform.state_url.clone().unwrap_or_else(|| {
                    let ip = match local_addr.ip() {
                        ip if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
                        ip => ip,
                    };
                    crate::server::url(SocketAddr::new(ip, local_addr.port()), tls.is_some())
                });
                tracing::info!(binary = %binary.display(), state_url, "Terraform backend available");
                Some(Arc::new(
                    Terraform::new(
                        &settings.terraform,
                        binary,
                        state_url,
                        &settings.data_dir(),
                        auth.clone(),
                    )
                    .await,
                ))
            }
            None => {
                tracing::info!(
                    binary = settings.terraform.binary,
                    "terraform not found: the Terraform backend is unavailable"
                );
                None
            }
        };
        anyhow::ensure!(
            terraform.is_some() || settings.terraform.default_backend != Backend::Terraform,
            "terraform.default_backend is terraform, but '{}' was not found",
            settings.terraform.binary
        );
        let queue = Queue::new(store.clone());
        let catalog = Arc::new(Catalog::new(
            provider.clone(),
            Duration::from_secs(settings.aws.catalog_ttl_secs),
        ));
        let api = ApiContext {
            store: store.clone(),
            queue,
            policy: Arc::new(settings.policy.clone()),
            max_attempts: settings.jobs.max_attempts,
            started_at: Instant::now(),
            cloud_endpoint: provider.describe_endpoint().into(),
            endpoint_url: provider.endpoint_url().map(Into::into),
            auth,
            terraform_available: terraform.is_some(),
            default_backend: settings.terraform.default_backend,
            catalog: catalog.clone(),
            notify: Arc::new(settings.notify),
            trusted_proxies: settings.server.trusted_proxies().map_err(anyhow::Error::msg)?.into(),
            limits: Arc::new(api::limits::Limits {
                request_timeout: Duration::from_secs(settings.server.request_timeout_secs),
                streams: api::limits::StreamSlots::new(
                    settings.server.max_event_streams,
                    settings.server.max_event_streams_per_caller,
                ),
            }),
        };
        let describer = DescribeBatcher::new(provider.clone(), Duration::from_millis(50));
        let jobs = Arc::new(JobContext {
            store,
            provider,
            catalog,
            describer,
            policy: settings.policy,
            settings: settings.jobs,
            terraform,
        });
        Ok(Application {
            listener,
            local_addr,
            server: settings.server,
            tls,
            api,
            jobs,
            notifier,
            reconcile: settings.reconcile,
            role: settings.role,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn port(&self) -> u16 {
        self.local_addr.port()
    }

    /// Serves HTTP and runs the workers until `shutdown` is cancelled; then stops accepting
    /// requests, lets workers finish or hand back their jobs, and returns.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let queue = self.api.queue.clone();
        if let Some(events) = self.api.store.subscribe().await? {
            let queue = queue.clone();
            tokio::spawn(async move { queue.relay(events).await });
        }
        let mut background = Vec::new();
        if self.role.runs_jobs() {
            background.push(tokio::spawn(jobs::run_workers(
                self.jobs.clone(),
                queue.clone(),
                shutdown.clone(),
            )));
            background.push(tokio::spawn(notify::run_deliveries(
                self.notifier.clone(),
                shutdown.clone(),
            )));
            let holder = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
            background.push(tokio::spawn(jobs::run_reconciler(
                self.jobs.clone(),
                Duration::from_secs_f64(self.reconcile.interval_secs),
                holder,
                shutdown.clone(),
            )));
        }
        if let Some(terraform) = self.jobs.terraform.clone().filter(|_| self.role.runs_jobs()) {
            tokio::spawn(async move {
                match terraform.check_state_url().await {
                    Ok(()) => tracing::info!(
                        state_url = terraform.state_url(),
                        "Terraform runs reach corral's state API"
                    ),
                    Err(problem) => tracing::warn!(
                        state_url = terraform.state_url(),
                        "Terraform runs will fail: {problem}; set terraform.state_url \
                         (CORRAL_TERRAFORM_STATE_URL) to an address at which this server \
                         reaches corral's API"
                    ),
                }
            });
        }
        let router = if self.role.serves_api() {
            api::router(self.api)
        } else {
            api::health_router(self.api)
        };
        let url = crate::server::url(self.local_addr, self.tls.is_some());
        tracing::info!(address = %url, role = ?self.role, "corral is listening");
        let served =
            crate::server::serve(self.listener, router, self.tls, &self.server, shutdown.clone())
                .await
                .context("HTTP server failed");
        shutdown.cancel();
        for task in background {
            task.await.context("a background task panicked")?;
        }
        served
    }
}

/// Runs `corral serve` or `corral migrate` (the server side of the binary; every other command
/// is a client, `cli::run`), logging at info.
pub async fn serve_command(command: crate::cli::Command) -> anyhow::Result<()> {
    crate::telemetry::init("info");
    match command {
        crate::cli::Command::Serve { server, listen, role } => {
            let mut settings = server.settings()?;
            if let Some(listen) = listen {
                settings.listen = listen;
            }
            if let Some(role) = role {
                settings.role = role;
            }
            let app = Application::build(settings).await?;
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            app.run_until_stopped(shutdown).await
        }
        crate::cli::Command::Migrate { server } => {
            let settings = server.settings()?;
            Store::connect(&settings.database_url).await?;
            tracing::info!(
                database = %crate::storage::redact_url(&settings.database_url),
                "migrations applied"
            );
            Ok(())
        }
        _ => anyhow::bail!("only serve and migrate run here"),
    }
}

/// Cancels `shutdown` on SIGINT (Ctrl-C) or SIGTERM.
async fn stop_on_signal(shutdown: CancellationToken) {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
    tracing::info!("shutdown requested: finishing running jobs");
    shutdown.cancel();
}
