from hexcore.cli import run

run()
