from unetkit.cli import main

main()
