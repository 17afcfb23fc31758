//! `pmoas-exporter`: wiring. Reads the configuration, starts discovery and
//! the enabled collectors, serves HTTP, and on SIGINT/SIGTERM detaches every
//! eBPF program and exits 0.

mod cli;
mod limits;
mod memory;
mod otlp_metrics;
mod process;
mod push;
mod reload;
mod request;
mod server;
mod webconfig;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pmoas_collectors::{BuildContext, Registry, ebpf};
use pmoas_config::{Config, LogFormat, LogLevel};
use pmoas_discovery::Discovery;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::{Invocation, RunArgs};

fn main() -> ExitCode {
    match cli::parse() {
        Invocation::Version => {
            println!("{}", cli::version_text());
            ExitCode::SUCCESS
        }
        Invocation::Completion(shell) => {
            clap_complete::generate(shell, &mut cli::command(), "pmoas-exporter", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Invocation::Run(args) => run(*args),
    }
}

fn run(args: RunArgs) -> ExitCode {
    // PMOAS_* settings, and the standard OTEL_EXPORTER_OTLP_* variables.
    let env: Vec<(String, String)> = std::env::vars().collect();
    let config = match Config::load(args.config_file.as_deref(), &env, &args.overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pmoas-exporter: invalid configuration:\n{e}");
            return ExitCode::from(2);
        }
    };
    let env_warnings = pmoas_config::unknown_env_vars(&env);
    if args.check_only {
        for w in &env_warnings {
            eprintln!("pmoas-exporter: warning: {w}");
        }
        let names: Vec<&str> =
            config.enabled_collectors().map(|c| c.iter().map(|i| i.name).collect()).unwrap_or_default();
        println!(
            "# configuration OK; collectors: {}\n{}",
            if names.is_empty() { "none".into() } else { names.join(", ") },
            config.to_toml()
        );
        return ExitCode::SUCCESS;
    }
    init_logging(config.log.level, config.log.format);
    for w in &env_warnings {
        tracing::warn!("{w}");
    }
    memory::configure_allocator();

    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().max_blocking_threads(16).build() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let reloader = Arc::new(reload::Reloader::new(args.config_file.clone(), args.overrides.clone(), config.clone()));
    let outcome = runtime.block_on(serve_until_signal(config, reloader));
    // Blocking collector calls still running get a moment; then everything
    // that holds eBPF objects is dropped, which detaches the programs.
    runtime.shutdown_timeout(Duration::from_secs(2));
    match outcome {
        Ok(registry) => {
            drop(registry);
            tracing::info!("stopped; eBPF programs detached");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(level: LogLevel, format: LogFormat) {
    let lvl = level.as_str();
    // Libraries' own chatter (eBPF loading, HTTP and TLS plumbing of the
    // Kubernetes client) only at trace.
    let libs = if level == LogLevel::Trace { "trace" } else { "warn" };
    let mut directives = lvl.to_string();
    for lib in ["aya", "aya_obj", "kube_client", "kube_runtime", "hyper", "hyper_util", "tower", "rustls", "h2"] {
        directives.push_str(&format!(",{lib}={libs}"));
    }
    // kube-client logs every failed request at ERROR; discovery logs the
    // same failure once per backoff step, with the delay.
    if level != LogLevel::Trace {
        directives.push_str(",kube_client::client::builder=off");
    }
    let filter = tracing_subscriber::EnvFilter::new(directives);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Runs until SIGINT or SIGTERM; returns the registry so the caller drops
/// it (and detaches) after the runtime is gone.
async fn serve_until_signal(config: Config, reloader: Arc<reload::Reloader>) -> anyhow::Result<Arc<Registry>> {
    let listen = config.listen_address()?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen} (--web.listen-address): {e}"))?;
    let listen = listener.local_addr().unwrap_or(listen);

    let discovery =
        Arc::new(Discovery::new(&config.discovery_settings()).map_err(|e| anyhow::anyhow!("discovery: {e}"))?);
    if let Some(limit) = ebpf::raise_memlock_limit() {
        tracing::debug!(limit, "RLIMIT_MEMLOCK stays limited (matters only on kernels before 5.11)");
    }
    for problem in [
        discovery.cgroupfs().v2_root().err().map(|e| e.to_string()),
        ebpf::check_privileges().err(),
        ebpf::check_btf().err(),
    ]
    .into_iter()
    .flatten()
    {
        tracing::error!("{problem}; the collectors that need it will report failed, the exporter keeps serving");
    }
    discovery.rescan();
    discovery.start_sources(&tokio::runtime::Handle::current());
    let stop = Arc::new(AtomicBool::new(false));
    spawn_rescans(discovery.clone(), stop.clone());

    let enabled = config.enabled_collectors()?;
    if enabled.is_empty() {
        tracing::warn!("no collector is enabled; serving the exporter's own metrics only");
    }
    let registry = Arc::new(Registry::new(&enabled));
    let node = pmoas_discovery::kubernetes::node_name(&config.kubernetes);
    let web_config = if config.web.config_file.is_empty() {
        None
    } else {
        let w =
            webconfig::WebConfig::load(std::path::Path::new(&config.web.config_file)).map_err(anyhow::Error::msg)?;
        tracing::info!(tls = w.tls.is_some(), basic_auth = w.auth_required(), "web config loaded");
        Some(Arc::new(w))
    };
    let push_target = if config.push.gateway_url.is_empty() {
        None
    } else {
        let instance = if config.push.instance.is_empty() { node.clone() } else { config.push.instance.clone() };
        Some(
            push::Target::new(&config.push.gateway_url, &config.push.job, &instance)
                .map_err(|e| anyhow::anyhow!("--push.gateway-url: {e}"))?,
        )
    };
    let otlp = Arc::new(
        pmoas_otlp::Pipeline::start(&config.otlp, pmoas_otlp::node_resource(Some(&node)))
            .map_err(|e| anyhow::anyhow!("otlp: {e}"))?,
    );
    let otlp_metrics = match config.otlp.resolve_metrics_from_process_env().map_err(|e| anyhow::anyhow!("otlp: {e}"))? {
        Some(destination) => Some(otlp_metrics::Exporting {
            client: pmoas_otlp::metrics::MetricsClient::new(destination).map_err(|e| anyhow::anyhow!("otlp: {e}"))?,
            interval: config.otlp.metrics_interval,
            node: pmoas_otlp::node_resource(Some(&node)),
            started: std::time::SystemTime::now(),
        }),
        None => None,
    };
    registry.start_all(BuildContext {
        discovery: discovery.clone(),
        config: config.collector.clone(),
        otlp: otlp.clone(),
        companions: Default::default(),
    });

    let state = Arc::new(server::AppState {
        registry: registry.clone(),
        discovery,
        web: std::sync::RwLock::new(server::ReloadableWeb {
            telemetry_path: config.web.telemetry_path.clone(),
            scrape_timeout: config.scrape.timeout,
        }),
        reloader: reloader.clone(),
        otlp: otlp.clone(),
        listen,
        max_requests: config.web.max_requests,
        max_connections: config.web.max_connections,
        push: push_target.as_ref().map(|_| Arc::new(push::PushStats::default())),
        otlp_metrics: otlp_metrics.as_ref().map(|_| Arc::new(otlp_metrics::OtlpMetricsStats::default())),
        web_config,
    });
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(server::serve(listener, state.clone(), shutdown_rx.clone()));
    let pushing = match (push_target, &state.push) {
        (Some(target), Some(stats)) => Some(tokio::spawn(push::run(
            target,
            config.push.interval,
            state.clone(),
            stats.clone(),
            shutdown_rx.clone(),
        ))),
        _ => None,
    };
    let exporting_metrics = match (otlp_metrics, &state.otlp_metrics) {
        (Some(exporting), Some(stats)) => {
            Some(tokio::spawn(otlp_metrics::run(exporting, state.clone(), stats.clone(), shutdown_rx.clone())))
        }
        _ => None,
    };
    tracing::info!(
        %listen,
        path = %config.web.telemetry_path,
        collectors = %enabled.iter().map(|c| c.name).collect::<Vec<_>>().join(","),
        version = %cli::version_text(),
        "pmoas-exporter serving"
    );

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break }
            _ = hup.recv() => reload(&reloader, &state),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = shutdown_tx.send(true);
    let _ = server.await;
    // The group leaves the Pushgateway with the exporter.
    if let Some(pushing) = pushing {
        let _ = pushing.await;
    }
    // And the last numbers reach the OTLP receiver.
    if let Some(exporting) = exporting_metrics {
        let _ = exporting.await;
    }
    // Traces already sampled get a moment to leave.
    if otlp.is_enabled() {
        let otlp = otlp.clone();
        let _ = tokio::task::spawn_blocking(move || otlp.flush(Duration::from_secs(2))).await;
    }
    Ok(registry)
}

/// SIGHUP: applies what can change while serving (see [`reload`]).
fn reload(reloader: &reload::Reloader, state: &server::AppState) {
    let outcome = reloader.reload(|new, keys| {
        let mut needs_restart = Vec::new();
        if keys.iter().any(|k| k.starts_with("sidecar.") || k.starts_with("target.")) {
            needs_restart = state.discovery.reload(&new.sidecar, &new.target).map_err(|e| e.to_string())?;
        }
        state.set_web(server::ReloadableWeb {
            telemetry_path: new.web.telemetry_path.clone(),
            scrape_timeout: new.scrape.timeout,
        });
        Ok(needs_restart)
    });
    match outcome {
        Ok(o) => {
            tracing::info!(applied = %o.applied.join(","), "SIGHUP: configuration reloaded");
            if !o.needs_restart.is_empty() {
                tracing::warn!(
                    changes = %o.needs_restart.join("; "),
                    "SIGHUP: these changes need a restart; their running values stay"
                );
            }
        }
        Err(e) => tracing::error!("SIGHUP: configuration not reloaded, nothing changed:\n{e}"),
    }
}

fn spawn_rescans(discovery: Arc<Discovery>, stop: Arc<AtomicBool>) {
    let spawned = std::thread::Builder::new().name("discovery".into()).spawn(move || discovery.run_rescans(&stop));
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the discovery thread; new containers are found at scrape time only");
    }
}
