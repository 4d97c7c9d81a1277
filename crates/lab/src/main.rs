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

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
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
