from hvd.cli.main import main

main()
