"""One module (or package) per `adcli` command; the CLI (adcli/cli.py) is a thin layer over these."""
