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
    let settings = settings::Settings::from_cli(cli::Cli::parse());
    match commands::run(&settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {}", f.message);
            ExitCode::from(f.code as u8)
        }
    }
}
