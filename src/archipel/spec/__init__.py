"""YAML specs -> strict models, with errors that name the file, the line and the allowed keys."""
