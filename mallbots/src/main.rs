//! The `mallbots` binary: `mallbots serve` runs every module in one process.

use anyhow::Context;
use clap::{Parser, Subcommand};
use mallbots::app::{App, Config, TokenSource};
use tokio_util::sync::CancellationToken;

/// MallBots: Herald's reference application — a mall with kiosks, stores and shopper bots,
/// every module talking through events.
#[derive(Debug, Parser)]
#[command(name = "mallbots", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs every module in this process: the REST API (Swagger UI at /docs), the message
    /// router and the outbox relay. By default on one SQLite file with the SQL broker (no
    /// server needed); PostgreSQL and NATS, Redis or RabbitMQ on request. Ctrl-C stops it
    /// cleanly.
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address of the HTTP server.
    #[arg(long, env = "MALLBOTS_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    http_addr: String,
    /// The database: `sqlite://FILE` (created if missing) or `postgres://USER@HOST:PORT/DB`
    /// (tables in the schema named by --namespace, created if missing).
    #[arg(long, env = "MALLBOTS_DATABASE", default_value = "sqlite://mallbots.db")]
    database: String,
    /// The broker: unset = the SQL broker on the same database; or `nats://HOST:PORT`
    /// (JetStream), `redis://HOST:PORT` (Streams), `amqp://USER:PASS@HOST:PORT` (RabbitMQ).
    #[arg(long, env = "MALLBOTS_BROKER")]
    broker: Option<String>,
    /// Keeps this MallBots apart from others on the same servers: the PostgreSQL schema and
    /// the prefix of broker streams, keys and queues.
    #[arg(long, env = "MALLBOTS_NAMESPACE", default_value = mallbots::app::DEFAULT_NAMESPACE)]
    namespace: String,
    /// Bearer token of the admin endpoints; unset = generated at first start, printed once
    /// and kept in `mallbots-admin-token` next to the database.
    #[arg(long, env = "MALLBOTS_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn")),
        )
        .init();
    match Cli::parse().command {
        Command::Serve(args) => serve(args).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config {
        http_addr: args.http_addr,
        database: args.database,
        broker: args.broker,
        namespace: args.namespace,
        ephemeral_broker: false,
        admin_token: args.admin_token,
    };
    let app = App::build(config).await?;
    match app.token_source() {
        TokenSource::Generated(file) => {
            println!("Admin token (generated; shown only this once): {}", app.admin_token());
            if let Some(file) = file {
                println!("It is kept in {}.", file.display());
            }
        }
        TokenSource::Stored(file) => println!("Admin token: read from {}", file.display()),
        TokenSource::Configured => {}
    }
    println!("MallBots on http://{} (API docs at http://{}/docs)", app.local_addr(), app.local_addr());
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    app.run(shutdown).await.context("running MallBots")
}

/// Cancels `shutdown` on Ctrl-C or SIGTERM.
async fn stop_on_signal(shutdown: CancellationToken) {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}
