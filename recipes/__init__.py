"""Built-in recipes, one YAML file per method; installed as the package `adcli.recipes`."""
