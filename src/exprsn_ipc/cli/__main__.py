from exprsn_ipc.cli import main

main()
