module github.com/sandpool/sandpool/clients/go

go 1.19

// grpc and protobuf: the versions the client is built and tested with
// (Debian bookworm's packages); genproto: the version that grpc 1.33.3
// itself requires. Newer releases work as well.
require (
	google.golang.org/genproto v0.0.0-20200526211855-cb27e3aa2013
	google.golang.org/grpc v1.33.3
	google.golang.org/protobuf v1.28.1
)
