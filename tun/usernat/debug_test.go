package usernat

import (
	"fmt"
	"reflect"
	"testing"
	"unsafe"

	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

func clientStack(h *harness) *stack.Stack {
	v := reflect.ValueOf(h.cnet).Elem().FieldByName("stack")
	return *(**stack.Stack)(unsafe.Pointer(v.UnsafeAddr()))
}

func TestDebugPing6(t *testing.T) {
	for i := range 100 {
		h := newHarness(t, testConfig())
		ping(t, h, testGW4, 7)
		ok := t.Run(fmt.Sprint(i), func(t *testing.T) { ping(t, h, testGW6, 7) })
		if !ok {
			cs := clientStack(h)
			st := cs.Stats()
			fmt.Printf("client: ip recv %d delivered %d invalid dst %d malformed %d icmp6 rcvd echoreply %d sent echoreq %d; icmp6 invalid %d; unknownproto %d\n",
				st.IP.PacketsReceived.Value(), st.IP.PacketsDelivered.Value(), st.IP.InvalidDestinationAddressesReceived.Value(), st.IP.MalformedPacketsReceived.Value(),
				st.ICMP.V6.PacketsReceived.EchoReply.Value(), st.ICMP.V6.PacketsSent.EchoRequest.Value(), st.ICMP.V6.PacketsReceived.Invalid.Value(),
				st.DroppedPackets.Value())
			fmt.Printf("client icmp ep stats: rcvd %d, dropped %v\n", st.ICMP.V6.PacketsReceived.Unrecognized.Value(), 0)
			
			t.Fatalf("failed at %d", i)
		}
		h.close()
	}
}
