//! The `lab` command: the command line becomes [`settings::Settings`], one module of
//! [`commands`] per verb calls the library crates, [`render`] prints the result, and
//! [`exit`] turns errors into messages and exit codes. The only crate that prints.

mod cli;
mod commands;
mod exit;
mod progress;
mod remote;
mod render;
mod settings;

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let json = cli.format == cli::Format::Json;
    let result = settings::Settings::from_cli(cli).and_then(|s| commands::run(&s));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if !f.message.is_empty() {
                eprintln!("error: {}", f.message);
            }
            // A script that asked for JSON gets a document on stdout whatever happened: the
            // verb's report, or else the error.
            if json && !f.message.is_empty() && !render::printed_json() {
                render::print_json(&serde_json::json!({
                    "error": f.message,
                    "exit_code": f.code.code(),
                }));
            }
            ExitCode::from(f.code.code())
        }
    }
}

/// A command line clap refused (or `--help`, `--version`): clap says it as usual, and a run that
/// asked for JSON (`--format json`, `--format=json` or `LAB_FORMAT=json`) also gets the error
/// as a document on stdout.
fn usage_error(e: clap::Error) -> ExitCode {
    let _ = e.print();
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion)
        || matches!(
            e.kind(),
            ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        )
    {
        return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
    }
    let args: Vec<String> = std::env::args().collect();
    let asked = args
        .windows(2)
        .any(|w| w[0] == "--format" && w[1] == "json")
        || args.iter().any(|a| a == "--format=json")
        || std::env::var("LAB_FORMAT").is_ok_and(|f| f == "json");
    let code = exit::Exit::Invalid.code();
    if asked {
        let message = e.render().to_string();
        let first = message
            .lines()
            .next()
            .unwrap_or("")
            .trim_start_matches("error: ");
        render::print_json(&serde_json::json!({ "error": first, "exit_code": code }));
    }
    ExitCode::from(code)
}
