"""The client dialects: chat completions, Responses and Messages, each parsed, laid out and answered in its own terms."""
