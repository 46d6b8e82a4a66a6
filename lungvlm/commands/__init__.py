"""The `lungvlm` subcommands: thin, typed calls of the library; the only code that imports data_modules."""
