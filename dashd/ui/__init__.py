"""The web dashboard's files (HTML, CSS, JavaScript modules), served by
L{dashd.api.ui}. Plain files, no build step: edit them and restart dashd."""
