use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tollgate::cli::{self, Cli, Command};
use tollgate::config::{LogSettings, Settings};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Serve { config } => match Settings::load(config.as_deref()) {
            Ok(settings) => {
                tollgate::telemetry::init_logging(&settings.log);
                tollgate::server::serve(settings).await
            }
            Err(e) => Err(e),
        },
        Command::Check {
            url,
            config,
            timeout_seconds,
        } => cli::check(url, config, Duration::from_secs(timeout_seconds)).await,
        Command::Admin(args) => cli::admin::run(args).await,
        Command::Guardrail {
            command:
                cli::GuardrailCommand::Test {
                    text,
                    source,
                    config,
                },
        } => cli::guardrail_test(text, &source, config).await,
        Command::Config { config } => Settings::load(config.as_deref())
            .and_then(|s| cli::print(serde_json::to_string_pretty(&s)?)),
        Command::DevToken {
            key,
            kid,
            client_id,
            scope,
            team,
            team_claim,
            issuer,
            ttl_seconds,
        } => cli::dev_token(
            &key,
            &kid,
            &client_id,
            &scope,
            team.as_deref(),
            &team_claim,
            &issuer,
            ttl_seconds,
        )
        .and_then(cli::print),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tollgate::telemetry::init_logging(&LogSettings::default());
            eprintln!("tollgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}
