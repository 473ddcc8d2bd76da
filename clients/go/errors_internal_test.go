package sandpool

import (
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/sandpool/sandpool/clients/go/sandpoolv1"
)

// Every reason of errors.proto has a kind: a reason added to the proto
// fails here until it is mapped.
func TestEveryReasonHasAKind(t *testing.T) {
	for number, name := range pb.ErrorReason_name {
		if number == 0 {
			continue
		}
		if _, ok := byReason[pb.ErrorReason(number)]; !ok {
			t.Errorf("reason %s has no kind", name)
		}
	}
}

// A lease reason about another lease is not this session's loss; one about
// this lease is, with the state from its `end` metadata.
func TestLeaseReasonsNameTheirLease(t *testing.T) {
	st, err := status.New(codes.FailedPrecondition, "lease abc has ended").WithDetails(&errdetails.ErrorInfo{
		Reason: "LEASE_ENDED", Domain: ErrorDomain, Metadata: map[string]string{"lease_id": "abc", "end": "LEASE_STATE_EXPIRED"},
	})
	if err != nil {
		t.Fatal(err)
	}
	lost, ok := mapLeaseError(st.Err(), "abc").(*LeaseLostError)
	if !ok || lost.State != pb.LeaseState_LEASE_STATE_EXPIRED || lost.Base.Code != codes.FailedPrecondition {
		t.Fatalf("about this lease: %#v", mapLeaseError(st.Err(), "abc"))
	}
	other, ok := mapLeaseError(st.Err(), "xyz").(*Error)
	if !ok || other.Kind != KindFailedPrecondition {
		t.Fatalf("about another lease: %#v", mapLeaseError(st.Err(), "xyz"))
	}
	// A lease whose replica is gone (died, or restarted): lost, saying so.
	gone, err := status.New(codes.FailedPrecondition, `replica "a" is gone`).WithDetails(&errdetails.ErrorInfo{
		Reason: "LEASE_ENDED", Domain: ErrorDomain, Metadata: map[string]string{"lease_id": "abc", "end": "LEASE_STATE_REPLICA_GONE", "replica": "a"},
	})
	if err != nil {
		t.Fatal(err)
	}
	lost, ok = mapLeaseError(gone.Err(), "abc").(*LeaseLostError)
	if !ok || lost.State != pb.LeaseState_LEASE_STATE_REPLICA_GONE {
		t.Fatalf("replica gone: %#v", mapLeaseError(gone.Err(), "abc"))
	}
	unknown, err := status.New(codes.NotFound, "new").WithDetails(&errdetails.ErrorInfo{Reason: "SOMETHING_NEW", Domain: ErrorDomain})
	if err != nil {
		t.Fatal(err)
	}
	e := mapError(unknown.Err()).(*Error)
	if r, ok := e.Reason(); !ok || r != pb.ErrorReason_ERROR_REASON_UNSPECIFIED || e.Kind != KindNotFound {
		t.Fatalf("unknown reason: %v %v %v", r, ok, e.Kind)
	}
}
