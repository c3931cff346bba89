"""The repository's text: the snapshot of a commit and the working diff, read through libgit2."""
