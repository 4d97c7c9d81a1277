//! The `lab` command: the command line becomes [`settings::Settings`], one module of
//! [`commands`] per verb calls the library crates, [`render`] prints the result, and
//! [`exit`] turns errors into messages and exit codes. The only crate that prints.

mod cli;
mod commands;
mod exit;
mod progress;
mod relay;
mod remote;
mod render;
mod settings;

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};

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
            if json && !f.message.is_empty() {
                error_json(&f.message, f.code.code());
            }
            ExitCode::from(f.code.code())
        }
    }
}

/// A command line clap refused (or `--help`, `--version`): clap says it as usual, and a run that
/// asked for JSON (on the command line or in `LAB_FORMAT`) also gets the error as a document.
fn usage_error(e: clap::Error) -> ExitCode {
    let _ = e.print();
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
    }
    // What clap could read of the command line, the format included, errors aside.
    let asked = cli::Cli::command()
        .ignore_errors(true)
        .try_get_matches()
        .ok()
        .and_then(|m| m.get_one::<cli::Format>("format").copied())
        == Some(cli::Format::Json);
    let code = exit::Exit::Invalid.code();
    if asked {
        let message = e.render().to_string();
        let first = message.lines().next().unwrap_or("");
        error_json(first.trim_start_matches("error: "), code);
    }
    ExitCode::from(code)
}

/// The error as the JSON document on stdout, unless the verb already printed its report.
fn error_json(message: &str, code: u8) {
    if !render::printed_json() {
        render::print_json(&serde_json::json!({ "error": message, "exit_code": code }));
    }
}
