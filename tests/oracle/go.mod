module runner/oracle

go 1.19
