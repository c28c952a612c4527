"""The embedded default world: models the project trains itself on data a package ships."""
