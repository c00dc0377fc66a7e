//! The `auth-gateway` command line: serve, or administer the token table
//! directly in Postgres (which is how the first admin token is made).
//!
//! `token create` prints only the token on stdout, so
//! `TOKEN=$(auth-gateway token create ...)` works; everything else a
//! command has to say goes to stderr.

use crate::auth::scope::Scope;
use crate::auth::token::generate_ed25519_pem;
use crate::config::{Config, environment_help};
use crate::tokens::issuer::{Authority, Issuer, TokenInfo, TokenRequest};
use crate::tokens::store::{Reach, TokenStore};
use clap::{Parser, Subcommand};
use service_common::stream_pattern::StreamPattern;
use std::path::PathBuf;
use std::time::Duration;

/// Command line of the `auth-gateway` binary.
#[derive(Debug, Parser)]
#[command(
    name = "auth-gateway",
    version,
    about = "Bearer-token gateway in front of stream-server",
    after_help = environment_help()
)]
pub struct Cli {
    /// TOML file with settings; `GW_*` environment variables override it.
    #[arg(long, value_name = "FILE", env = "GW_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Print a new Ed25519 signing key (PKCS#8 PEM) for GW_JWT__KEY_FILE.
    Keygen,
    /// Exit 0 if the gateway on this machine's configured port is ready
    /// (`GET /readyz`), for container health checks.
    Healthcheck,
    /// Issue, list and revoke tokens.
    Token {
        #[command(subcommand)]
        action: TokenCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Issue a token and print it (only it) on stdout. Unlike the admin API,
    /// this is not limited by any other token's rights.
    Create {
        /// Who the token is for; forwarded upstream as X-Auth-Subject.
        #[arg(long)]
        subject: String,
        /// read, write, delete, admin or subscribe; repeat for several.
        #[arg(long = "scope", required = true)]
        scopes: Vec<Scope>,
        /// Stream path pattern ('*' one segment, '**' any); repeat for several.
        #[arg(long = "stream")]
        streams: Vec<StreamPattern>,
        /// Lifetime, e.g. 24h, 30m, 7days.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Free text shown by `token list`.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List tokens (never the tokens themselves).
    List {
        /// One JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by id; every gateway refuses it within a second.
    Revoke {
        id: String,
        /// Also revoke every token it issued, directly or through others.
        #[arg(long)]
        cascade: bool,
    },
}

/// A command that failed; the message is for the operator.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CommandError(pub String);

fn fail(e: impl std::fmt::Display) -> CommandError {
    CommandError(e.to_string())
}

async fn connect(config: &Config) -> Result<TokenStore, CommandError> {
    let url = config.database_url().map_err(fail)?;
    TokenStore::connect(url)
        .await
        .map_err(|e| CommandError(format!("cannot connect to DATABASE_URL: {e}")))
}

/// Runs an administrative command (anything but `serve`).
pub async fn run(config: &Config, command: Command) -> Result<(), CommandError> {
    match command {
        Command::Serve | Command::Healthcheck => {
            Err(CommandError("not an administrative command".into()))
        }
        Command::Keygen => {
            print!("{}", generate_ed25519_pem().map_err(fail)?);
            Ok(())
        }
        Command::Migrate => {
            connect(config).await?.migrate().await.map_err(fail)?;
            eprintln!("migrations applied");
            Ok(())
        }
        Command::Token { action } => token(config, action).await,
    }
}

async fn token(config: &Config, action: TokenCommand) -> Result<(), CommandError> {
    let store = connect(config).await?;
    match action {
        TokenCommand::Create {
            subject,
            scopes,
            streams,
            ttl,
            description,
        } => {
            let keys = config.jwt.keys().map_err(fail)?;
            let issuer = Issuer {
                store: &store,
                keys: &keys,
                issuer: &config.jwt.issuer,
                audience: &config.jwt.audience,
            };
            let issued = issuer
                .issue(
                    TokenRequest {
                        subject,
                        scopes,
                        streams,
                        ttl,
                        description,
                    },
                    Authority::Operator,
                )
                .await
                .map_err(fail)?;
            eprintln!(
                "issued token {} for {} (expires {})",
                issued.info.id,
                issued.info.subject,
                date(issued.info.expires_at)
            );
            println!("{}", issued.token);
            Ok(())
        }
        TokenCommand::List { json } => {
            let tokens: Vec<TokenInfo> = store
                .list(Reach::All)
                .await
                .map_err(fail)?
                .into_iter()
                .map(TokenInfo::from)
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&tokens).map_err(fail)?);
            } else {
                print!("{}", table(&tokens));
            }
            Ok(())
        }
        TokenCommand::Revoke { id, cascade } => {
            let revoked = store
                .revoke_within(Reach::All, &id, cascade)
                .await
                .map_err(fail)?;
            match (revoked, cascade) {
                (0, _) => Err(CommandError(format!(
                    "no active token {id:?} (unknown or already revoked{})",
                    if cascade {
                        ", as is everything it issued"
                    } else {
                        ""
                    }
                ))),
                (_, false) => {
                    eprintln!("revoked {id}");
                    Ok(())
                }
                (revoked, true) => {
                    eprintln!("revoked {revoked} token(s): {id} and the tokens it issued");
                    Ok(())
                }
            }
        }
    }
}

/// `token list` as aligned columns.
fn table(tokens: &[TokenInfo]) -> String {
    let header = [
        "ID",
        "SUBJECT",
        "SCOPES",
        "STREAMS",
        "STATUS",
        "EXPIRES",
        "LAST USED",
        "ISSUED BY",
    ];
    let rows: Vec<[String; 8]> = tokens
        .iter()
        .map(|t| {
            [
                t.id.clone(),
                t.subject.clone(),
                t.scopes.join(","),
                t.streams.join(","),
                t.status.to_owned(),
                date(t.expires_at),
                t.last_used_at.map_or_else(|| "never".into(), date),
                // No issuer: made with the CLI.
                t.issued_by.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(padded.join("  ").trim_end());
        out.push('\n');
    };
    line(&header);
    for row in &rows {
        line(&row.each_ref().map(String::as_str));
    }
    out
}

fn date(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_parses() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "auth-gateway",
            "token",
            "create",
            "--subject",
            "alice",
            "--scope",
            "read",
            "--scope",
            "write",
            "--scope",
            "subscribe",
            "--stream",
            "chat/**",
            "--ttl",
            "90m",
        ])
        .expect("parses");
        match cli.command {
            Some(Command::Token {
                action:
                    TokenCommand::Create {
                        scopes,
                        streams,
                        ttl,
                        ..
                    },
            }) => {
                assert_eq!(scopes, vec![Scope::Read, Scope::Write, Scope::Subscribe]);
                assert_eq!(streams.len(), 1);
                assert_eq!(ttl, Duration::from_secs(90 * 60));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            Cli::try_parse_from([
                "auth-gateway",
                "token",
                "create",
                "--subject",
                "a",
                "--scope",
                "root"
            ])
            .is_err()
        );
        let cli = Cli::try_parse_from(["auth-gateway", "token", "revoke", "t1", "--cascade"])
            .expect("parses");
        assert!(matches!(
            cli.command,
            Some(Command::Token {
                action: TokenCommand::Revoke { cascade: true, .. }
            })
        ));
    }

    #[test]
    fn list_table_aligns_and_never_shows_tokens() {
        let now = time::OffsetDateTime::now_utc();
        let info = TokenInfo {
            id: "0b6f".into(),
            subject: "alice".into(),
            scopes: vec!["read".into(), "write".into()],
            streams: vec!["chat/**".into()],
            description: String::new(),
            created_at: now,
            expires_at: now,
            revoked_at: None,
            last_used_at: None,
            issued_by: None,
            status: "active",
        };
        let child = TokenInfo {
            id: "77aa".into(),
            issued_by: Some("0b6f".into()),
            ..info.clone()
        };
        let text = table(&[info, child]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("ID"));
        assert!(lines[1].contains("read,write") && lines[1].contains("never"));
        assert_eq!(lines[0].find("SUBJECT"), lines[1].find("alice"));
        assert!(lines[1].ends_with('-'), "no issuer: {:?}", lines[1]);
        assert_eq!(lines[0].find("ISSUED BY"), lines[2].rfind("0b6f"));
    }
}
