"""Writers of intsim integer graphs in other runtimes' formats."""
