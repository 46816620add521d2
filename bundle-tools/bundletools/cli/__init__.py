"""The euca2ools-named commands; each module has main(argv=None) -> exit status."""
