"""The one exception type for problems a user can cause (bad file, bad spec, bad option).

Pages show its message with ``st.error``; the CLI prints it and exits 2. Anything else that
escapes is a bug in Orthoscope, not in the user's input.
"""


class OrthoscopeError(Exception):
    """A problem with the user's input, with a message written for that user."""
