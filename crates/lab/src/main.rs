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
    let result = settings::Settings::from_cli(cli::Cli::parse()).and_then(|s| commands::run(&s));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if !f.message.is_empty() {
                eprintln!("error: {}", f.message);
            }
            ExitCode::from(f.code.code())
        }
    }
}
