//! The `lab` command: parses arguments, calls the library crates, prints results and maps
//! errors to exit codes. The only crate that prints.

mod cli;
mod progress;

use std::io::Write;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use cli::{Cli, Command, ConfigCommand, Format};
use lab_generate::GenerateError;
use lab_model::ModelError;

/// Exit codes, documented in the README and `lab --help`.
#[derive(Debug, Clone, Copy)]
#[repr(u8)]
enum Exit {
    Failure = 1,
    Invalid = 2,
}

/// An error on its way to the user: the message and the exit code.
struct Failure {
    code: Exit,
    message: String,
}

impl From<ModelError> for Failure {
    fn from(e: ModelError) -> Self {
        let code = match e {
            ModelError::Io { .. } => Exit::Failure,
            _ => Exit::Invalid,
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

impl From<GenerateError> for Failure {
    fn from(e: GenerateError) -> Self {
        let code = match e {
            GenerateError::Io { .. } => Exit::Failure,
            _ => Exit::Invalid,
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {}", f.message);
            ExitCode::from(f.code as u8)
        }
    }
}

fn run(cli: &Cli) -> Result<(), Failure> {
    match &cli.command {
        Command::Generate(args) => {
            let lab = lab_model::load(&args.lab.files)?;
            let progress = progress::Progress::new(cli.quiet);
            let request = lab_generate::Request {
                lab: &lab,
                overlay: args.overlay.as_deref(),
                build_dir: &args.build,
                hosts: &args.select.hosts,
                nodes: &args.select.nodes,
            };
            let result = lab_generate::generate(&request, &|e| progress.on_event(e));
            progress.finish();
            let output = result?;
            match cli.format {
                Format::Json => print_json(&output),
                Format::Text if !cli.quiet => {
                    eprintln!(
                        "generated {} node(s) of lab {} with overlay {} in {}",
                        output.nodes.len(),
                        lab.name,
                        output.overlay,
                        output.build_dir.join(&output.overlay).display()
                    );
                }
                Format::Text => {}
            }
            Ok(())
        }
        Command::Config(ConfigCommand::Show { lab, explain }) => {
            let lab = lab_model::load(&lab.files)?;
            match cli.format {
                Format::Json => print_json(&lab.effective.to_json()),
                Format::Text => print!("{}", lab_model::to_yaml(&lab.effective, *explain)),
            }
            Ok(())
        }
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(*shell, &mut cmd, "lab", &mut std::io::stdout());
            Ok(())
        }
    }
}

fn print_json(value: &impl serde::Serialize) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer_pretty(&mut out, value);
    let _ = writeln!(out);
}
